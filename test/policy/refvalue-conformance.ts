/**
 * Conformance suite for ReferenceValueStore implementations. Every store (memory here; SQLite and
 * PostgreSQL in the key broker) runs it:
 *
 *   describeReferenceValueStore('sqlite', async ({ now }) => openSqliteStore(':memory:', { now }));
 *
 * The factory gets a clock the suite controls (createdAt must come from it) and returns an empty store.
 */
import { describe, expect, it } from 'vitest';
import {
  activeReferenceValues,
  ReferenceValueError,
  type ReferenceValueInput,
  type ReferenceValueStore,
  referenceValuesFor,
} from '../../src/policy/index.js';

export interface StoreFactoryOptions {
  now: () => Date;
}

export function describeReferenceValueStore(
  label: string,
  factory: (options: StoreFactoryOptions) => Promise<ReferenceValueStore>,
): void {
  const t0 = new Date('2026-01-01T00:00:00Z');
  const setup = async () => {
    const clock = { now: t0 };
    const store = await factory({ now: () => new Date(clock.now) });
    const advance = (ms: number) => {
      clock.now = new Date(clock.now.getTime() + ms);
    };
    return { store, clock, advance };
  };
  const td = (over: Partial<ReferenceValueInput> = {}): ReferenceValueInput => ({
    tenant: 'acme',
    tee: 'tdx',
    name: 'mr_td',
    values: ['aa'.repeat(48)],
    ...over,
  });

  describe(`ReferenceValueStore conformance: ${label}`, () => {
    it('add returns version 1 with an id, createdAt from the clock, and normalised values', async () => {
      const { store } = await setup();
      const r = await store.add(td({ values: ['AB', 'ab', 'cd'], note: 'release 1.2' }));
      expect(r).toMatchObject({ tenant: 'acme', tee: 'tdx', name: 'mr_td', version: 1, note: 'release 1.2' });
      expect(r.values).toEqual(['ab', 'cd']);
      expect(r.createdAt.getTime()).toBe(t0.getTime());
      expect(r.expiresAt).toBeUndefined();
      expect(typeof r.id).toBe('string');
      expect(r.id.length).toBeGreaterThan(0);
      expect(await store.get('acme', r.id)).toEqual(r);
    });

    it('each add of the same (tenant, tee, name) is the next version; list shows the newest', async () => {
      const { store, advance } = await setup();
      const v1 = await store.add(td());
      advance(1000);
      const v2 = await store.add(td({ values: ['bb'.repeat(48)] }));
      advance(1000);
      await store.add(td({ name: 'rtmr0', values: ['cc'] }));
      await store.add(td({ tee: 'snp', name: 'measurement', values: ['dd'] }));
      expect([v1.version, v2.version]).toEqual([1, 2]);
      expect(v1.id).not.toBe(v2.id);
      const latest = await store.list({ tenant: 'acme' });
      expect(latest.map((r) => [r.tee, r.name, r.version])).toEqual([
        ['snp', 'measurement', 1],
        ['tdx', 'mr_td', 2],
        ['tdx', 'rtmr0', 1],
      ]);
      expect((await store.list({ tenant: 'acme', tee: 'tdx' })).map((r) => r.name)).toEqual([
        'mr_td',
        'rtmr0',
      ]);
      expect(
        (await store.list({ tenant: 'acme', tee: 'tdx', allVersions: true })).map((r) => r.version),
      ).toEqual([1, 2, 1]);
      const history = await store.history({ tenant: 'acme', tee: 'tdx', name: 'mr_td' });
      expect(history.map((r) => [r.version, r.values[0]])).toEqual([
        [1, 'aa'.repeat(48)],
        [2, 'bb'.repeat(48)],
      ]);
      expect(history[0]).toEqual(v1);
    });

    it('concurrent adds get distinct, consecutive versions', async () => {
      const { store } = await setup();
      const added = await Promise.all(
        Array.from({ length: 8 }, (_, i) => store.add(td({ values: [`0${i}`] }))),
      );
      expect(added.map((r) => r.version).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(new Set(added.map((r) => r.id)).size).toBe(8);
    });

    it('tenants are isolated: list, history, get and the active values', async () => {
      const { store } = await setup();
      const mine = await store.add(td());
      await store.add(td({ tenant: 'globex', values: ['ee'] }));
      await store.add(td({ tenant: 'globex', values: ['ff'] }));
      expect((await store.list({ tenant: 'acme' })).map((r) => r.version)).toEqual([1]);
      expect(await store.history({ tenant: 'acme', tee: 'tdx', name: 'mr_td' })).toHaveLength(1);
      expect(await store.get('globex', mine.id)).toBeUndefined();
      expect(await store.list({ tenant: 'initech' })).toEqual([]);
      const active = await referenceValuesFor(store, { tenant: 'globex', tee: 'tdx', at: t0 });
      expect(active).toEqual({ mr_td: ['ff'] });
    });

    it('expiry: an expired newest version accepts nothing; a later version restores', async () => {
      const { store, advance } = await setup();
      await store.add(td({ expiresAt: new Date(t0.getTime() + 60_000) }));
      const q = { tenant: 'acme', tee: 'tdx' as const };
      expect(await referenceValuesFor(store, { ...q, at: new Date(t0.getTime() + 59_999) })).toEqual({
        mr_td: ['aa'.repeat(48)],
      });
      expect(await referenceValuesFor(store, { ...q, at: new Date(t0.getTime() + 60_000) })).toEqual({
        mr_td: [],
      });
      advance(120_000);
      await store.add(td({ values: ['bb'] }));
      expect(await referenceValuesFor(store, { ...q, at: new Date(t0.getTime() + 120_000) })).toEqual({
        mr_td: ['bb'],
      });
      expect(activeReferenceValues(await store.list({ ...q, allVersions: true }), { ...q, at: t0 })).toEqual({
        mr_td: ['aa'.repeat(48)],
      });
    });

    it('refuses invalid input without storing anything', async () => {
      const { store } = await setup();
      const bad: [Partial<ReferenceValueInput> & Record<string, unknown>, string][] = [
        [{ values: ['xyz'] }, 'refvalue-bad-value'],
        [{ values: ['abc'] }, 'refvalue-bad-value'],
        [{ tee: 'tdx2' as 'tdx' }, 'refvalue-bad-tee'],
        [{ name: '' }, 'refvalue-bad-name'],
        [{ tenant: '' }, 'refvalue-bad-tenant'],
        [{ expiresAt: t0 }, 'refvalue-bad-expiry'],
        [{ valuez: ['aa'] }, 'refvalue-malformed'],
      ];
      for (const [over, code] of bad) {
        const e = await store.add(td(over)).then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(e, code).toBeInstanceOf(ReferenceValueError);
        expect((e as ReferenceValueError).code).toBe(code);
      }
      expect(await store.list({ tenant: 'acme', allVersions: true })).toEqual([]);
    });

    it('returned records are copies: changing them does not change the store', async () => {
      const { store } = await setup();
      const r = await store.add(td());
      r.values.push('ff');
      const listed = await store.list({ tenant: 'acme' });
      listed[0]!.values.length = 0;
      expect((await store.history({ tenant: 'acme', tee: 'tdx', name: 'mr_td' }))[0]!.values).toEqual([
        'aa'.repeat(48),
      ]);
    });
  });
}
