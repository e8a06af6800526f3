import { describe, expect, it } from 'vitest';
import {
  activeReferenceValues,
  MemoryReferenceValueStore,
  type ReferenceValue,
  ReferenceValueError,
  TEE_KINDS,
  validateReferenceValueInput,
} from '../../src/policy/index.js';
import { describeReferenceValueStore } from './refvalue-conformance.js';

describeReferenceValueStore('memory', async ({ now }) => new MemoryReferenceValueStore({ now }));

const now = new Date('2026-01-01T00:00:00Z');
const day = 86_400_000;

function rv(over: Partial<ReferenceValue>): ReferenceValue {
  return {
    id: crypto.randomUUID(),
    tenant: 'acme',
    tee: 'tdx',
    name: 'mr_td',
    values: ['aa'],
    version: 1,
    createdAt: now,
    ...over,
  };
}

describe('activeReferenceValues', () => {
  it('takes the newest version of each name, whatever the order of the input', () => {
    const all = [
      rv({ version: 2, values: ['bb'], createdAt: new Date(now.getTime() + day) }),
      rv({ version: 1, values: ['aa'] }),
      rv({ name: 'rtmr0', values: ['cc'] }),
    ];
    expect(
      activeReferenceValues(all, { tenant: 'acme', tee: 'tdx', at: new Date(now.getTime() + 2 * day) }),
    ).toEqual({
      mr_td: ['bb'],
      rtmr0: ['cc'],
    });
  });

  it('ignores versions created after `at`', () => {
    const all = [rv({}), rv({ version: 2, values: ['bb'], createdAt: new Date(now.getTime() + day) })];
    expect(activeReferenceValues(all, { tenant: 'acme', tee: 'tdx', at: now })).toEqual({ mr_td: ['aa'] });
    expect(
      activeReferenceValues(all, { tenant: 'acme', tee: 'tdx', at: new Date(now.getTime() - 1) }),
    ).toEqual({});
  });

  it('an expired newest version yields an empty list (refuse), not the older version and not "unjudged"', () => {
    const all = [rv({}), rv({ version: 2, values: ['bb'], expiresAt: new Date(now.getTime() + day) })];
    expect(
      activeReferenceValues(all, { tenant: 'acme', tee: 'tdx', at: new Date(now.getTime() + day) }),
    ).toEqual({
      mr_td: [],
    });
  });

  it('never mixes tenants or TEE kinds', () => {
    const all = [
      rv({ tenant: 'globex', values: ['ee'] }),
      rv({ tee: 'snp', name: 'measurement', values: ['dd'] }),
    ];
    expect(activeReferenceValues(all, { tenant: 'acme', tee: 'tdx', at: now })).toEqual({});
    expect(activeReferenceValues(all, { tenant: 'acme', tee: 'snp', at: now })).toEqual({
      measurement: ['dd'],
    });
  });

  it('returns copies of the value lists', () => {
    const r = rv({});
    activeReferenceValues([r], { tenant: 'acme', tee: 'tdx', at: now }).mr_td!.push('ff');
    expect(r.values).toEqual(['aa']);
  });
});

describe('validateReferenceValueInput', () => {
  const ok = { tenant: 'acme', tee: 'snp', name: 'measurement', values: ['0A0b'] };

  it('normalises hex to lower case and keeps the optional fields', () => {
    const expiresAt = new Date(now.getTime() + day);
    expect(validateReferenceValueInput({ ...ok, expiresAt, note: 'v2' }, now)).toEqual({
      ...ok,
      values: ['0a0b'],
      expiresAt,
      note: 'v2',
    });
  });

  it('accepts every TEE kind and an empty list (revocation)', () => {
    for (const tee of TEE_KINDS) expect(validateReferenceValueInput({ ...ok, tee }, now).tee).toBe(tee);
    expect(validateReferenceValueInput({ ...ok, values: [] }, now).values).toEqual([]);
  });

  it('names the field at fault', () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{ ...ok, values: ['0x0a'] }, 'refvalue-bad-value', 'values[0]'],
      [{ ...ok, values: ['0a', 'g0'] }, 'refvalue-bad-value', 'values[1]'],
      [{ ...ok, values: [10] }, 'refvalue-bad-value', 'values[0]'],
      [{ ...ok, values: ['aa'.repeat(513)] }, 'refvalue-bad-value', 'values[0]'],
      [{ ...ok, values: Array(1025).fill('aa') }, 'refvalue-bad-value', 'values'],
      [{ ...ok, values: 'aa' }, 'refvalue-malformed', 'values'],
      [{ ...ok, tee: 'SNP' }, 'refvalue-bad-tee', 'tee'],
      [{ ...ok, name: 'a b' }, 'refvalue-bad-name', 'name'],
      [{ ...ok, tenant: 'a\nb' }, 'refvalue-bad-tenant', 'tenant'],
      [{ ...ok, tenant: 'x'.repeat(129) }, 'refvalue-bad-tenant', 'tenant'],
      [{ ...ok, expiresAt: '2027-01-01' }, 'refvalue-bad-expiry', 'expiresAt'],
      [{ ...ok, expiresAt: new Date(now.getTime() - 1) }, 'refvalue-bad-expiry', 'expiresAt'],
      [{ ...ok, note: 5 }, 'refvalue-bad-note', 'note'],
      [{ ...ok, version: 7 }, 'refvalue-malformed', 'version'],
    ];
    for (const [input, code, field] of cases) {
      let err: unknown;
      try {
        validateReferenceValueInput(input, now);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(input).slice(0, 80)).toBeInstanceOf(ReferenceValueError);
      expect([(err as ReferenceValueError).code, (err as ReferenceValueError).field]).toEqual([code, field]);
    }
    expect(() => validateReferenceValueInput(null, now)).toThrow(ReferenceValueError);
  });
});
