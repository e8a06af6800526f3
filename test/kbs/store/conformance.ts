/**
 * The behaviour every KbsStore backend must show, run against memory, SQLite and PostgreSQL. Each test
 * gets a fresh store from `makeStore`, built with a test log builder that a test can make throw.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { StoreOptions } from '../../../src/kbs/store/common.js';
import {
  ConflictError,
  type KbsStore,
  type LogAppend,
  type LogEntryBuilder,
  NotFoundError,
  type SealedSecret,
  type StoredLogEntry,
  type TrainReceiptFacts,
} from '../../../src/kbs/store/types.js';

const hex = (u: Uint8Array | undefined): string | null => (u ? Buffer.from(u).toString('hex') : null);

/** canonical = JSON of {index, prev, fields}; leafHash = SHA-256(0x00 ‖ canonical), as RFC 6962 leaves. */
export function leafHash(canonical: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(Uint8Array.of(0)).update(canonical).digest());
}

export function testLog(): {
  build: LogEntryBuilder;
  failNext(): void;
  /** The builder refuses every entry with this subject. */
  failSubject: string | undefined;
  calls: number;
} {
  const state = {
    calls: 0,
    fail: false,
    failSubject: undefined as string | undefined,
    failNext() {
      state.fail = true;
    },
    build: ((index, prev, fields) => {
      state.calls++;
      if (state.fail || fields.subject === state.failSubject) {
        state.fail = false;
        throw new Error('test builder refuses this entry');
      }
      const canonical = new TextEncoder().encode(JSON.stringify({ index, prev: hex(prev), ...fields }));
      return { canonical, leafHash: leafHash(canonical) };
    }) as LogEntryBuilder,
  };
  return state;
}

/** Entries are 0…n-1 with no gap, each names the previous leaf hash, each hash matches its bytes. */
export function expectUnbrokenChain(entries: StoredLogEntry[]): void {
  let prev: string | null = null;
  entries.forEach((e, i) => {
    expect(e.index).toBe(i);
    const parsed = JSON.parse(new TextDecoder().decode(e.canonical)) as {
      index: number;
      prev: string | null;
    };
    expect(parsed.index).toBe(i);
    expect(parsed.prev).toBe(prev);
    expect(hex(e.leafHash)).toBe(hex(leafHash(e.canonical)));
    prev = hex(e.leafHash);
  });
}

/**
 * Expects `logNodes` to hold the true hash of every complete subtree of the store's log (and nothing
 * for the incomplete ones).
 */
export async function expectAllNodes(store: KbsStore): Promise<void> {
  const leaves = (await store.logEntries(0, await store.logSize())).map((e) => e.leafHash);
  const ids: { level: number; index: number }[] = [];
  for (let level = 1; 2 ** level <= 2 * leaves.length; level++) {
    for (let index = 0; index <= leaves.length / 2 ** level; index++) ids.push({ level, index });
  }
  const got = await store.logNodes(ids);
  ids.forEach(({ level, index }, k) => {
    const [a, b] = [index * 2 ** level, (index + 1) * 2 ** level];
    if (b <= leaves.length) expect(hex(got[k]), `${level}/${index}`).toBe(hex(mth(leaves.slice(a, b))));
    else expect(got[k], `${level}/${index}`).toBeUndefined();
  });
}

/** RFC 6962 MTH, recursively from its definition: the reference stored subtrees are checked against. */
export function mth(leaves: readonly Uint8Array[]): Uint8Array {
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return new Uint8Array(
    createHash('sha256')
      .update(Uint8Array.of(1))
      .update(mth(leaves.slice(0, k)))
      .update(mth(leaves.slice(k)))
      .digest(),
  );
}

export const logFields = (kind: string, subject = 'x', tenant: string | null = 't1'): LogAppend => ({
  kind,
  tenant,
  actor: 'admin@test',
  subject,
  details: { n: 1 },
});

const secret = (id: string, fill: number): SealedSecret => ({
  masterKeyId: id,
  ciphertext: new Uint8Array(40).fill(fill),
});

/** listReferenceValues' order: the operator (null) first, then tenant, tee, name, version. */
function byOwnerTeeName(
  a: { tenant: string | null; tee: string; name: string; version: number },
  b: typeof a,
) {
  const key = (r: typeof a) => [r.tenant === null ? '' : `\u0001${r.tenant}`, r.tee, r.name].join('\u0000');
  return key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : a.version - b.version;
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

export type MakeStore = (opts: StoreOptions) => Promise<KbsStore>;

export function storeConformance(name: string, makeStore: MakeStore): void {
  describe(`KbsStore conformance: ${name}`, () => {
    let open: KbsStore[] = [];
    afterEach(async () => {
      await Promise.all(open.map((s) => s.close()));
      open = [];
    });
    async function fresh(): Promise<{ store: KbsStore; log: ReturnType<typeof testLog> }> {
      const log = testLog();
      const store = await makeStore({ buildLogEntry: log.build });
      open.push(store);
      return { store, log };
    }
    async function allEntries(store: KbsStore): Promise<StoredLogEntry[]> {
      return store.logEntries(0, await store.logSize());
    }
    async function withResource(store: KbsStore, path = 'repo1/key/a', tenant = 't1') {
      const [repository, type, tag] = path.split('/') as [string, string, string];
      if ((await store.repositoryOwner(repository)) === undefined) {
        await store.createRepository(repository, tenant, logFields('repository.create', repository, tenant));
      }
      return store.putResource(
        {
          path,
          repository,
          type,
          tag,
          tenant,
          size: 32,
          contentType: 'application/octet-stream',
          secret: secret('mk1', 1),
        },
        logFields('resource.put', path, tenant),
      );
    }

    it('migrate is idempotent and a new store has an empty log', async () => {
      const { store } = await fresh();
      await store.migrate();
      await store.migrate();
      expect(await store.logSize()).toBe(0);
      expect(await store.logEntries(0, 10)).toEqual([]);
      expect(await store.latestCheckpoint()).toBeUndefined();
    });

    describe('repositories and tenancy', () => {
      it('records the owning tenant and logs the creation', async () => {
        const { store } = await fresh();
        expect(await store.repositoryOwner('models')).toBeUndefined();
        await store.createRepository('models', 'acme', logFields('repository.create', 'models', 'acme'));
        expect(await store.repositoryOwner('models')).toEqual({ tenant: 'acme' });
        const [e] = await allEntries(store);
        expect(JSON.parse(new TextDecoder().decode(e!.canonical))).toMatchObject({
          kind: 'repository.create',
          tenant: 'acme',
          subject: 'models',
        });
      });

      it('refuses a repository name another tenant owns, and a duplicate, without logging', async () => {
        const { store } = await fresh();
        await store.createRepository('models', 'acme', logFields('repository.create'));
        await expect(
          store.createRepository('models', 'evil', logFields('repository.create')),
        ).rejects.toThrow(/belongs to tenant acme/);
        await expect(
          store.createRepository('models', 'acme', logFields('repository.create')),
        ).rejects.toBeInstanceOf(ConflictError);
        expect(await store.repositoryOwner('models')).toEqual({ tenant: 'acme' });
        expect(await store.logSize()).toBe(1);
      });

      it("putResource into another tenant's repository is a ConflictError and changes nothing", async () => {
        const { store } = await fresh();
        await store.createRepository('models', 'acme', logFields('repository.create'));
        const err = await store
          .putResource(
            {
              path: 'models/key/llama',
              repository: 'models',
              type: 'key',
              tag: 'llama',
              tenant: 'evil',
              size: 32,
              contentType: 'application/octet-stream',
              secret: secret('mk1', 7),
            },
            logFields('resource.put'),
          )
          .catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ConflictError);
        expect((err as Error).message).toMatch(/repository models belongs to tenant acme, not tenant evil/);
        expect(await store.getResource('models/key/llama')).toBeUndefined();
        expect(await store.logSize()).toBe(1);
      });

      it('putResource into an unknown repository is a NotFoundError', async () => {
        const { store } = await fresh();
        await expect(
          store.putResource(
            {
              path: 'nope/key/a',
              repository: 'nope',
              type: 'key',
              tag: 'a',
              tenant: 'acme',
              size: 1,
              contentType: 'text/plain',
              secret: secret('mk1', 1),
            },
            logFields('resource.put'),
          ),
        ).rejects.toBeInstanceOf(NotFoundError);
        expect(await store.logSize()).toBe(0);
      });
    });

    describe('resources', () => {
      it('puts version 1 and returns exactly the metadata shape, secret only from getResource', async () => {
        const { store } = await fresh();
        const m = await withResource(store);
        expect(Object.keys(m).sort()).toEqual(
          [
            'path',
            'repository',
            'type',
            'tag',
            'tenant',
            'version',
            'size',
            'contentType',
            'createdAt',
            'updatedAt',
          ].sort(),
        );
        expect(m).toMatchObject({
          path: 'repo1/key/a',
          repository: 'repo1',
          type: 'key',
          tag: 'a',
          tenant: 't1',
          version: 1,
          size: 32,
          contentType: 'application/octet-stream',
        });
        expect(m.createdAt).toMatch(ISO);
        expect(m.updatedAt).toBe(m.createdAt);
        const r = await store.getResource('repo1/key/a');
        expect(r).toEqual({ ...m, secret: { masterKeyId: 'mk1', ciphertext: new Uint8Array(40).fill(1) } });
        expect(r!.secret.ciphertext.constructor).toBe(Uint8Array);
        expect(await store.getResource('repo1/key/zz')).toBeUndefined();
      });

      it('refuses a second put of the same path and a path that disagrees with its fields', async () => {
        const { store } = await fresh();
        await withResource(store);
        await expect(withResource(store)).rejects.toBeInstanceOf(ConflictError);
        await expect(
          store.putResource(
            {
              path: 'repo1/key/b',
              repository: 'repo1',
              type: 'key',
              tag: 'c',
              tenant: 't1',
              size: 1,
              contentType: 'x',
              secret: secret('mk1', 1),
            },
            logFields('resource.put'),
          ),
        ).rejects.toThrow(/does not match/);
        expect(await store.logSize()).toBe(2);
      });

      it('rotate bumps the version and replaces the value; an unknown path is a NotFoundError', async () => {
        const { store } = await fresh();
        const m1 = await withResource(store);
        await new Promise((r) => setTimeout(r, 5));
        const m2 = await store.rotateResource(
          'repo1/key/a',
          secret('mk1', 2),
          64,
          logFields('resource.rotate'),
        );
        expect(m2).toMatchObject({ version: 2, size: 64, createdAt: m1.createdAt });
        expect(m2.updatedAt > m1.updatedAt).toBe(true);
        const m3 = await store.rotateResource(
          'repo1/key/a',
          secret('mk1', 3),
          64,
          logFields('resource.rotate'),
        );
        expect(m3.version).toBe(3);
        expect((await store.getResource('repo1/key/a'))!.secret.ciphertext).toEqual(
          new Uint8Array(40).fill(3),
        );
        const size = await store.logSize();
        await expect(
          store.rotateResource('repo1/key/none', secret('mk1', 4), 1, logFields('resource.rotate')),
        ).rejects.toBeInstanceOf(NotFoundError);
        expect(await store.logSize()).toBe(size);
      });

      it('delete removes once and logs only a real deletion', async () => {
        const { store } = await fresh();
        await withResource(store);
        const size = await store.logSize();
        expect(await store.deleteResource('repo1/key/a', logFields('resource.delete'))).toBe(true);
        expect(await store.getResource('repo1/key/a')).toBeUndefined();
        expect(await store.deleteResource('repo1/key/a', logFields('resource.delete'))).toBe(false);
        expect(await store.logSize()).toBe(size + 1);
        // The path is free again.
        expect((await withResource(store)).version).toBe(1);
      });

      it('lists resources sorted by path, optionally for one tenant', async () => {
        const { store } = await fresh();
        await withResource(store, 'repo1/key/b');
        await withResource(store, 'repo1/key/a');
        await withResource(store, 'other/cert/z', 't2');
        expect((await store.listResources()).map((r) => r.path)).toEqual([
          'other/cert/z',
          'repo1/key/a',
          'repo1/key/b',
        ]);
        expect((await store.listResources('t1')).map((r) => r.path)).toEqual(['repo1/key/a', 'repo1/key/b']);
        expect(await store.listResources('nobody')).toEqual([]);
        expect(Object.keys((await store.listResources())[0]!)).not.toContain('secret');
      });

      it('reencryptSecrets replaces every secret in one logged change', async () => {
        const { store } = await fresh();
        await withResource(store, 'repo1/key/a');
        await withResource(store, 'repo1/key/b');
        const size = await store.logSize();
        const seen: string[] = [];
        const n = await store.reencryptSecrets(async (rec) => {
          seen.push(`${rec.path}@${rec.secret.masterKeyId}`);
          return { masterKeyId: 'mk2', ciphertext: new Uint8Array(40).fill(9) };
        }, logFields('master.rotate'));
        expect(n).toBe(2);
        expect(seen.sort()).toEqual(['repo1/key/a@mk1', 'repo1/key/b@mk1']);
        for (const p of ['repo1/key/a', 'repo1/key/b']) {
          const r = await store.getResource(p);
          expect(r!.secret).toEqual({ masterKeyId: 'mk2', ciphertext: new Uint8Array(40).fill(9) });
          expect(r!.version).toBe(1);
        }
        expect(await store.logSize()).toBe(size + 1);
      });

      it('reencryptSecrets changes nothing when the callback fails or a resource changes meanwhile', async () => {
        const { store } = await fresh();
        await withResource(store, 'repo1/key/a');
        await withResource(store, 'repo1/key/b');
        const size = await store.logSize();
        let calls = 0;
        await expect(
          store.reencryptSecrets(async () => {
            if (++calls === 2) throw new Error('KMS down');
            return secret('mk2', 9);
          }, logFields('master.rotate')),
        ).rejects.toThrow('KMS down');
        await expect(
          store.reencryptSecrets(async (rec) => {
            if (rec.path === 'repo1/key/a') {
              await store.rotateResource('repo1/key/b', secret('mk1', 5), 32, logFields('resource.rotate'));
            }
            return secret('mk2', 9);
          }, logFields('master.rotate')),
        ).rejects.toBeInstanceOf(ConflictError);
        expect((await store.getResource('repo1/key/a'))!.secret).toEqual(secret('mk1', 1));
        expect((await store.getResource('repo1/key/b'))!.secret).toEqual(secret('mk1', 5));
        expect(await store.logSize()).toBe(size + 1); // only the rotate
      });
    });

    describe('policies', () => {
      it('keeps every version; the latest per scope is active', async () => {
        const { store } = await fresh();
        await store.createRepository('repo1', 't1', logFields('repository.create'));
        const p1 = await store.setPolicy(
          {
            scope: { kind: 'repository', repository: 'repo1' },
            tenant: 't1',
            source: 'true',
            actor: 'alice',
          },
          logFields('policy.set'),
        );
        expect(p1).toMatchObject({ version: 1, source: 'true', actor: 'alice', tenant: 't1' });
        expect(p1.createdAt).toMatch(ISO);
        const p2 = await store.setPolicy(
          { scope: { kind: 'repository', repository: 'repo1' }, tenant: 't1', source: 'false', actor: 'bob' },
          logFields('policy.set'),
        );
        expect(p2.version).toBe(2);
        const res = await store.setPolicy(
          { scope: { kind: 'resource', path: 'repo1/key/a' }, tenant: 't1', source: 'r', actor: 'bob' },
          logFields('policy.set'),
        );
        expect(res).toMatchObject({ scope: { kind: 'resource', path: 'repo1/key/a' }, version: 1 });
        const def = await store.setPolicy(
          { scope: { kind: 'default' }, tenant: 'operator', source: 'd', actor: 'root' },
          logFields('policy.set'),
        );
        expect(def.scope).toEqual({ kind: 'default' });
        expect(await store.getPolicy({ kind: 'repository', repository: 'repo1' })).toEqual(p2);
        expect(await store.getPolicy({ kind: 'default' })).toEqual(def);
        expect(await store.getPolicy({ kind: 'repository', repository: 'nope' })).toBeUndefined();
        expect(await store.listPolicies('t1')).toEqual([p1, p2, res]);
        expect(await store.listPolicies()).toEqual([def, p1, p2, res]);
        expect(await store.logSize()).toBe(5);
      });

      it("refuses a policy on another tenant's repository or an unknown one", async () => {
        const { store } = await fresh();
        await store.createRepository('repo1', 't1', logFields('repository.create'));
        await expect(
          store.setPolicy(
            { scope: { kind: 'resource', path: 'repo1/key/a' }, tenant: 'evil', source: 'true', actor: 'x' },
            logFields('policy.set'),
          ),
        ).rejects.toBeInstanceOf(ConflictError);
        await expect(
          store.setPolicy(
            {
              scope: { kind: 'repository', repository: 'unclaimed' },
              tenant: 'evil',
              source: 'true',
              actor: 'x',
            },
            logFields('policy.set'),
          ),
        ).rejects.toBeInstanceOf(NotFoundError);
        expect(await store.listPolicies()).toEqual([]);
        expect(await store.logSize()).toBe(1);
      });
    });

    describe('reference values', () => {
      it('versions per tenant+tee+name and keeps expiry and note', async () => {
        const { store } = await fresh();
        const a1 = await store.addReferenceValue(
          {
            tenant: 't1',
            tee: 'tdx',
            name: 'mr_td',
            values: ['aa'],
            expiresAt: '2030-01-01T00:00:00Z',
            note: 'v1',
          },
          logFields('refval.add'),
        );
        expect(a1).toMatchObject({
          version: 1,
          values: ['aa'],
          expiresAt: '2030-01-01T00:00:00.000Z',
          note: 'v1',
        });
        expect(a1.id).toMatch(/\S/);
        expect(a1.createdAt).toMatch(ISO);
        const a2 = await store.addReferenceValue(
          { tenant: 't1', tee: 'tdx', name: 'mr_td', values: ['aa', 'bb'] },
          logFields('refval.add'),
        );
        expect(a2.version).toBe(2);
        expect(a2).not.toHaveProperty('expiresAt');
        expect(a2).not.toHaveProperty('note');
        expect(a2.id).not.toBe(a1.id);
        const b = await store.addReferenceValue(
          { tenant: 't2', tee: 'tdx', name: 'mr_td', values: ['cc'] },
          logFields('refval.add'),
        );
        expect(b.version).toBe(1);
        const c = await store.addReferenceValue(
          { tenant: 't1', tee: 'snp', name: 'measurement', values: [] },
          logFields('refval.add'),
        );
        expect(await store.listReferenceValues()).toEqual([c, a1, a2, b]);
        expect(await store.listReferenceValues({ tenant: 't1' })).toEqual([c, a1, a2]);
        expect(await store.listReferenceValues({ tee: 'tdx' })).toEqual([a1, a2, b]);
        expect(await store.listReferenceValues({ tenant: 't1', tee: 'tdx' })).toEqual([a1, a2]);
        await expect(
          store.addReferenceValue(
            { tenant: 't1', tee: 'tdx', name: 'x', values: [], expiresAt: 'soon' },
            logFields('refval.add'),
          ),
        ).rejects.toThrow(/not a valid time/);
        expect(await store.logSize()).toBe(4);
      });
    });

    describe('removing policies and reference values, reassigning repositories', () => {
      it('deletes every version of one policy scope, logging it once; an absent scope logs nothing', async () => {
        const { store } = await fresh();
        await store.createRepository('repo1', 't1', logFields('repository.create'));
        const scope = { kind: 'repository', repository: 'repo1' } as const;
        for (const source of ['true', 'false'])
          await store.setPolicy({ scope, tenant: 't1', source, actor: 'a' }, logFields('policy.set'));
        const res = await store.setPolicy(
          { scope: { kind: 'resource', path: 'repo1/key/a' }, tenant: 't1', source: 'r', actor: 'a' },
          logFields('policy.set'),
        );
        expect(await store.deletePolicy(scope, logFields('policy.delete', 'repository:repo1'))).toBe(2);
        expect(await store.getPolicy(scope)).toBeUndefined();
        expect(await store.listPolicies()).toEqual([res]);
        expect(await store.logSize()).toBe(5);
        expect(await store.deletePolicy(scope, logFields('policy.delete'))).toBe(0);
        expect(await store.deletePolicy({ kind: 'default' }, logFields('policy.delete'))).toBe(0);
        expect(await store.logSize()).toBe(5);
        const [, , , , e] = await allEntries(store);
        expect(JSON.parse(new TextDecoder().decode(e!.canonical))).toMatchObject({ kind: 'policy.delete' });
      });

      it("deletes one owner's (tee, name) set, every version, and nobody else's", async () => {
        const { store } = await fresh();
        const add = (tenant: string | null, name = 'mr_td', tee = 'tdx') =>
          store.addReferenceValue({ tenant, tee, name, values: ['aa'] }, logFields('refval.add'));
        await add('t1');
        await add('t1');
        const other = await add('t2');
        const op = await add(null);
        const snp = await add('t1', 'mr_td', 'snp');
        const name = await add('t1', 'rtmr0');
        const set = { tenant: 't1', tee: 'tdx', name: 'mr_td' };
        expect(await store.deleteReferenceValues(set, logFields('refval.delete'))).toBe(2);
        expect(await store.listReferenceValues()).toEqual([op, name, snp, other].sort(byOwnerTeeName));
        expect(await store.deleteReferenceValues(set, logFields('refval.delete'))).toBe(0);
        expect(await store.logSize()).toBe(7);
        expect(await store.deleteReferenceValues({ ...set, tenant: null }, logFields('refval.delete'))).toBe(
          1,
        );
        expect(await store.listReferenceValues({ tenant: null })).toEqual([]);
      });

      it('reassigns a repository with its resources and policies, in one logged change', async () => {
        const { store } = await fresh();
        await withResource(store, 'repo1/key/a', 't1');
        await withResource(store, 'repo10/key/a', 't1');
        for (const scope of [
          { kind: 'repository', repository: 'repo1' },
          { kind: 'resource', path: 'repo1/key/a' },
          { kind: 'repository', repository: 'repo10' },
          { kind: 'resource', path: 'repo10/key/a' },
        ] as const)
          await store.setPolicy({ scope, tenant: 't1', source: 'true', actor: 'a' }, logFields('policy.set'));
        const size = await store.logSize();
        expect(await store.assignRepository('repo1', 't2', logFields('repo.assign', 'repo1', 't2'))).toEqual({
          from: 't1',
        });
        expect(await store.repositoryOwner('repo1')).toEqual({ tenant: 't2' });
        expect((await store.listResources('t2')).map((r) => r.path)).toEqual(['repo1/key/a']);
        expect((await store.listResources('t1')).map((r) => r.path)).toEqual(['repo10/key/a']);
        expect((await store.listPolicies('t2')).map((p) => p.scope)).toEqual([
          { kind: 'repository', repository: 'repo1' },
          { kind: 'resource', path: 'repo1/key/a' },
        ]);
        expect(await store.listPolicies('t1')).toHaveLength(2);
        expect(await store.logSize()).toBe(size + 1);
        // The entry says who had it too: only the store knows, inside the transaction.
        const [entry] = await store.logEntries(size, size + 1);
        expect(JSON.parse(new TextDecoder().decode(entry!.canonical)).details).toMatchObject({ from: 't1' });
        // To the operator and back; the same owner again, or an unknown repository, changes nothing.
        expect(await store.assignRepository('repo1', null, logFields('repo.assign'))).toEqual({ from: 't2' });
        expect((await store.getResource('repo1/key/a'))?.tenant).toBeNull();
        await expect(store.assignRepository('repo1', null, logFields('repo.assign'))).rejects.toBeInstanceOf(
          ConflictError,
        );
        await expect(store.assignRepository('nope', 't1', logFields('repo.assign'))).rejects.toBeInstanceOf(
          NotFoundError,
        );
        expect(await store.logSize()).toBe(size + 2);
      });
    });

    describe('the operator as an owner of its own', () => {
      it('owns repositories, resources and policies as null, which no tenant query matches', async () => {
        const { store } = await fresh();
        await store.createRepository('Shared', null, logFields('repository', 'Shared', null));
        expect(await store.repositoryOwner('Shared')).toEqual({ tenant: null });
        await expect(
          store.createRepository('Shared', 'default', logFields('repository', 'Shared')),
        ).rejects.toThrow(/belongs to the operator, not tenant default/);
        await expect(
          store.putResource(
            {
              path: 'Shared/k/a',
              repository: 'Shared',
              type: 'k',
              tag: 'a',
              tenant: 'default',
              size: 1,
              contentType: 'application/octet-stream',
              secret: secret('mk1', 1),
            },
            logFields('resource.put'),
          ),
        ).rejects.toBeInstanceOf(ConflictError);
        const meta = await store.putResource(
          {
            path: 'Shared/k/a',
            repository: 'Shared',
            type: 'k',
            tag: 'a',
            tenant: null,
            size: 1,
            contentType: 'application/octet-stream',
            secret: secret('mk1', 1),
          },
          logFields('resource.put'),
        );
        expect(meta.tenant).toBeNull();
        await store.setPolicy(
          { scope: { kind: 'repository', repository: 'Shared' }, tenant: null, source: 'true', actor: 'a' },
          logFields('policy'),
        );
        await store.setPolicy(
          { scope: { kind: 'default' }, tenant: null, source: 'true', actor: 'a' },
          logFields('policy'),
        );
        for (const t of ['default', '*', 'operator']) {
          expect(await store.listResources(t)).toEqual([]);
          expect(await store.listPolicies(t)).toEqual([]);
        }
        expect((await store.listResources()).map((r) => r.tenant)).toEqual([null]);
        expect((await store.listPolicies()).map((p) => p.tenant)).toEqual([null, null]);
      });

      it('keeps operator-wide reference values apart from every tenant’s, versioned on their own', async () => {
        const { store } = await fresh();
        const add = (tenant: string | null, values: string[]) =>
          store.addReferenceValue({ tenant, tee: 'tdx', name: 'mr_td', values }, logFields('refval.add'));
        const o1 = await add(null, ['aa']);
        const t1 = await add('t1', ['bb']);
        const o2 = await add(null, ['cc']);
        expect([o1.version, t1.version, o2.version]).toEqual([1, 1, 2]);
        expect(o1.tenant).toBeNull();
        expect(await store.listReferenceValues({ tenant: null })).toEqual([o1, o2]);
        expect(await store.listReferenceValues({ tenant: 't1' })).toEqual([t1]);
        expect(await store.listReferenceValues({ tenant: '*' })).toEqual([]);
        expect(await store.listReferenceValues()).toEqual([o1, o2, t1]);
      });
    });

    describe('admin-token revocations', () => {
      it('records a revocation with its log entry, answers by id, lists, and refuses a second', async () => {
        const { store } = await fresh();
        expect(await store.isAdminTokenRevoked('j1')).toBe(false);
        const r = await store.revokeAdminToken(
          { tokenId: 'j1', actor: 'admin:ops', expiresAt: '2030-01-01T00:00:00Z', reason: 'lost' },
          logFields('admin-token-revoke', 'admin-token:j1'),
        );
        expect(r).toEqual({
          tokenId: 'j1',
          actor: 'admin:ops',
          expiresAt: '2030-01-01T00:00:00.000Z',
          reason: 'lost',
          revokedAt: expect.stringMatching(ISO),
        });
        const r2 = await store.revokeAdminToken({ tokenId: 'j2', actor: 'admin:ops' }, logFields('x', 'j2'));
        expect(r2).not.toHaveProperty('reason');
        expect(r2).not.toHaveProperty('expiresAt');
        expect(await store.isAdminTokenRevoked('j1')).toBe(true);
        expect(await store.isAdminTokenRevoked('j3')).toBe(false);
        await expect(
          store.revokeAdminToken({ tokenId: 'j1', actor: 'x' }, logFields('x')),
        ).rejects.toBeInstanceOf(ConflictError);
        expect((await store.listAdminTokenRevocations()).map((x) => x.tokenId).sort()).toEqual(['j1', 'j2']);
        expect(await store.logSize()).toBe(2);
      });

      it('rolls a revocation back when its log entry cannot be built', async () => {
        const { store, log } = await fresh();
        log.failNext();
        await expect(
          store.revokeAdminToken({ tokenId: 'j1', actor: 'x' }, logFields('admin-token-revoke')),
        ).rejects.toThrow();
        expect(await store.isAdminTokenRevoked('j1')).toBe(false);
        expect(await store.logSize()).toBe(0);
      });
    });

    describe('confidential training', () => {
      const job = 'a'.repeat(64);
      const cp = (number: number, fill = String(number % 10)) => ({ number, sha256: fill.repeat(64) });
      const facts = (sha: string, recipients: string[][], of = job): TrainReceiptFacts => ({
        job: of,
        sha256: sha.repeat(64),
        subjects: [{ name: 'model.gguf.sealed', sha256: 'e'.repeat(64) }],
        trainer: { kind: 'builtin', name: 'llama', digest: 'sha256:1234' },
        outputs: recipients.map((r, i) => ({ file: `out${i}`, sha256: 'f'.repeat(64), recipients: r })),
        tee: { kind: 'sample', insecure: true, status: 'warning', measurement: '00'.repeat(48) },
      });

      it('advances a checkpoint by compare-and-set, logging each advance and nothing else', async () => {
        const { store } = await fresh();
        expect(await store.trainCheckpoint(job)).toBeUndefined();
        expect(await store.advanceTrainCheckpoint(job, null, cp(1), logFields('train-checkpoint'))).toEqual({
          advanced: true,
        });
        expect(await store.advanceTrainCheckpoint(job, cp(1), cp(2), logFields('train-checkpoint'))).toEqual({
          advanced: true,
        });
        expect(await store.trainCheckpoint(job)).toEqual(cp(2));
        // An older prev, the same number with another digest, and "none" are refused with what is held.
        for (const prev of [cp(1), cp(2, 'b'), null]) {
          expect(await store.advanceTrainCheckpoint(job, prev, cp(9), logFields('x'))).toEqual({
            advanced: false,
            held: cp(2),
          });
        }
        expect(await store.advanceTrainCheckpoint('b'.repeat(64), cp(1), cp(2), logFields('x'))).toEqual({
          advanced: false,
          held: undefined,
        });
        expect(await store.trainCheckpoint(job)).toEqual(cp(2));
        expect(
          (await allEntries(store)).map((e) => JSON.parse(new TextDecoder().decode(e.canonical)).kind),
        ).toEqual(['train-checkpoint', 'train-checkpoint']);
      });

      it('of two concurrent advances from the same checkpoint exactly one wins', async () => {
        const { store } = await fresh();
        await store.advanceTrainCheckpoint(job, null, cp(1), logFields('train-checkpoint'));
        const results = await Promise.all([
          store.advanceTrainCheckpoint(job, cp(1), cp(2, 'a'), logFields('train-checkpoint')),
          store.advanceTrainCheckpoint(job, cp(1), cp(2, 'b'), logFields('train-checkpoint')),
        ]);
        expect(results.filter((r) => r.advanced)).toHaveLength(1);
        const winner = results[0]!.advanced ? cp(2, 'a') : cp(2, 'b');
        expect(results.find((r) => !r.advanced)).toEqual({ advanced: false, held: winner });
        expect(await store.trainCheckpoint(job)).toEqual(winner);
        expect(await store.logSize()).toBe(2);
      });

      it('rolls an advance back when its log entry cannot be built', async () => {
        const { store, log } = await fresh();
        log.failNext();
        await expect(store.advanceTrainCheckpoint(job, null, cp(1), logFields('x'))).rejects.toThrow(
          /refuses/,
        );
        expect(await store.trainCheckpoint(job)).toBeUndefined();
        expect(await store.logSize()).toBe(0);
      });

      it('records a receipt once with its log entry, found by each recipient, newest first', async () => {
        const { store, log } = await fresh();
        const envelope = new TextEncoder().encode('{"payloadType":"x"}');
        const a = await store.addTrainReceipt(
          facts('1', [['kbs:///o/m/key', 'kbs:///d/k/key'], ['kbs:///o/m/key']]),
          envelope,
          logFields('train-receipt'),
        );
        expect(a.created).toBe(true);
        expect(a.record).toMatchObject({
          ...facts('1', [['kbs:///o/m/key', 'kbs:///d/k/key'], ['kbs:///o/m/key']]),
          logIndex: 0,
        });
        expect(a.record.recordedAt).toMatch(ISO);
        // The same receipt again, or another for the same job: the job's receipt, nothing logged.
        const again = await store.addTrainReceipt(facts('1', [['kbs:///o/m/key']]), envelope, logFields('x'));
        expect(again).toEqual({ record: a.record, created: false });
        const other = await store.addTrainReceipt(facts('9', [['kbs:///o/m/key']]), envelope, logFields('x'));
        expect(other).toEqual({ record: a.record, created: false });
        expect(await store.trainReceiptOfJob(job)).toEqual(a.record);
        expect(await store.trainReceiptOfJob('c'.repeat(64))).toBeUndefined();
        const b = await store.addTrainReceipt(
          facts('2', [['kbs:///o/m/key']], 'b'.repeat(64)),
          envelope,
          logFields('train-receipt'),
        );
        expect(await store.trainReceiptOfJob('b'.repeat(64))).toEqual(b.record);
        expect(b.record.logIndex).toBe(1);
        expect((await store.trainReceiptsFor('kbs:///o/m/key', 10)).map((r) => r.sha256)).toEqual([
          '2'.repeat(64),
          '1'.repeat(64),
        ]);
        expect(await store.trainReceiptsFor('kbs:///o/m/key', 1)).toEqual([b.record]);
        expect(await store.trainReceiptsFor('kbs:///d/k/key', 10)).toEqual([a.record]);
        expect(await store.trainReceiptsFor('kbs:///none', 10)).toEqual([]);
        expect(await store.trainReceipt('1'.repeat(64))).toEqual({ record: a.record, envelope });
        expect(await store.trainReceipt('3'.repeat(64))).toBeUndefined();
        // A receipt whose entry cannot be built leaves nothing behind.
        log.failNext();
        await expect(
          store.addTrainReceipt(facts('4', [['kbs:///o/m/key']], 'c'.repeat(64)), envelope, logFields('x')),
        ).rejects.toThrow(/refuses/);
        expect(await store.trainReceiptOfJob('c'.repeat(64))).toBeUndefined();
        expect(await store.trainReceipt('4'.repeat(64))).toBeUndefined();
        expect(await store.trainReceiptsFor('kbs:///o/m/key', 10)).toHaveLength(2);
        expect(await store.logSize()).toBe(2);
      });
    });

    describe('sessions', () => {
      const session = (id: string, expiresAt = '2099-01-01T00:00:00.000Z') => ({
        id,
        tee: 'sample',
        nonce: 'bm9uY2U=',
        status: 'challenged' as const,
        expiresAt,
      });

      it('creates, reads and refuses a duplicate id', async () => {
        const { store } = await fresh();
        await store.createSession(session('s1'));
        expect(await store.getSession('s1')).toEqual(session('s1'));
        expect(await store.getSession('nope')).toBeUndefined();
        await expect(store.createSession(session('s1'))).rejects.toBeInstanceOf(ConflictError);
        expect(await store.logSize()).toBe(0);
      });

      it('markAttested is compare-and-set: of two concurrent calls exactly one wins', async () => {
        const { store } = await fresh();
        await store.createSession(session('s1'));
        const results = await Promise.all([
          store.markAttested('s1', 'tokenA', '{"kty":"A"}'),
          store.markAttested('s1', 'tokenB', '{"kty":"B"}'),
        ]);
        expect(results.filter(Boolean)).toHaveLength(1);
        const s = await store.getSession('s1');
        const winner = results[0] ? 'A' : 'B';
        expect(s).toEqual({
          ...session('s1'),
          status: 'attested',
          token: `token${winner}`,
          teePubkey: `{"kty":"${winner}"}`,
        });
        expect(await store.markAttested('s1', 'tokenC', '{}')).toBe(false);
        expect(await store.markAttested('unknown', 'tokenC', '{}')).toBe(false);
      });

      it('deleteExpiredSessions removes sessions whose expiry has passed, and only those', async () => {
        const { store } = await fresh();
        await store.createSession(session('old', '2020-01-01T00:00:00.000Z'));
        await store.createSession(session('edge', '2025-06-01T00:00:00.000Z'));
        await store.createSession(session('new', '2099-01-01T00:00:00.000Z'));
        expect(await store.deleteExpiredSessions('2025-06-01T00:00:00Z')).toBe(1);
        expect(await store.getSession('old')).toBeUndefined();
        expect(await store.getSession('edge')).toBeDefined();
        expect(await store.deleteExpiredSessions('2025-06-01T00:00:00.001Z')).toBe(1);
        expect(await store.getSession('new')).toBeDefined();
        expect(await store.deleteExpiredSessions('2025-06-02T00:00:00Z')).toBe(0);
      });
    });

    describe('transparency log', () => {
      it('every logged mutation appends one entry; the chain is contiguous and unbroken', async () => {
        const { store } = await fresh();
        await withResource(store); // 2 entries
        await store.rotateResource('repo1/key/a', secret('mk1', 2), 1, logFields('resource.rotate'));
        await store.setPolicy(
          { scope: { kind: 'default' }, tenant: 'op', source: 'true', actor: 'x' },
          logFields('policy.set'),
        );
        await store.addReferenceValue(
          { tenant: 't1', tee: 'tdx', name: 'mr_td', values: [] },
          logFields('refval.add'),
        );
        await store.reencryptSecrets(async () => secret('mk2', 3), logFields('master.rotate'));
        const released = await store.appendLog(logFields('release', 'repo1/key/a'));
        await store.deleteResource('repo1/key/a', logFields('resource.delete'));
        expect(await store.logSize()).toBe(8);
        const entries = await allEntries(store);
        expectUnbrokenChain(entries);
        expect(entries[6]).toEqual(released);
        expect(
          entries.map((e) => (JSON.parse(new TextDecoder().decode(e.canonical)) as { kind: string }).kind),
        ).toEqual([
          'repository.create',
          'resource.put',
          'resource.rotate',
          'policy.set',
          'refval.add',
          'master.rotate',
          'release',
          'resource.delete',
        ]);
        expect(entries[0]!.canonical.constructor).toBe(Uint8Array);
      });

      it('logEntries reads the half-open range [from, to) and refuses a reversed one', async () => {
        const { store } = await fresh();
        for (let i = 0; i < 5; i++) await store.appendLog(logFields('release', `r${i}`));
        expect((await store.logEntries(1, 3)).map((e) => e.index)).toEqual([1, 2]);
        expect((await store.logEntries(3, 100)).map((e) => e.index)).toEqual([3, 4]);
        expect(await store.logEntries(2, 2)).toEqual([]);
        await expect(store.logEntries(3, 1)).rejects.toBeInstanceOf(RangeError);
      });

      it('concurrent appends through one store still form one chain', async () => {
        const { store } = await fresh();
        const got = await Promise.all(
          Array.from({ length: 50 }, (_, i) => store.appendLog(logFields('release', `r${i}`))),
        );
        expect(got.map((e) => e.index).sort((a, b) => a - b)).toEqual(
          Array.from({ length: 50 }, (_, i) => i),
        );
        expectUnbrokenChain(await allEntries(store));
      });

      it('in a burst of concurrent appends, one failing entry fails alone and the rest stay contiguous', async () => {
        const { store, log } = await fresh();
        await store.appendLog(logFields('release', 'first'));
        log.failSubject = 'r4';
        const burst = Array.from({ length: 10 }, (_, i) => store.appendLog(logFields('release', `r${i}`)));
        const settled = await Promise.allSettled(burst);
        expect(settled.map((r) => r.status)).toEqual([
          ...Array(4).fill('fulfilled'),
          'rejected',
          ...Array(5).fill('fulfilled'),
        ]);
        const entries = await allEntries(store);
        expect(entries).toHaveLength(10);
        expectUnbrokenChain(entries);
      });

      it('when the log entry cannot be built, the mutation rolls back and nothing is appended', async () => {
        const { store, log } = await fresh();
        await withResource(store);
        const attempts: [string, () => Promise<unknown>][] = [
          ['createRepository', () => store.createRepository('repo2', 't1', logFields('repository.create'))],
          [
            'putResource',
            () =>
              store.putResource(
                {
                  path: 'repo1/key/b',
                  repository: 'repo1',
                  type: 'key',
                  tag: 'b',
                  tenant: 't1',
                  size: 1,
                  contentType: 'x',
                  secret: secret('mk1', 1),
                },
                logFields('resource.put'),
              ),
          ],
          [
            'rotateResource',
            () => store.rotateResource('repo1/key/a', secret('mk1', 8), 8, logFields('rotate')),
          ],
          ['deleteResource', () => store.deleteResource('repo1/key/a', logFields('resource.delete'))],
          [
            'reencryptSecrets',
            () => store.reencryptSecrets(async () => secret('mk2', 8), logFields('master')),
          ],
          [
            'setPolicy',
            () =>
              store.setPolicy(
                { scope: { kind: 'repository', repository: 'repo1' }, tenant: 't1', source: 'x', actor: 'x' },
                logFields('policy.set'),
              ),
          ],
          [
            'addReferenceValue',
            () =>
              store.addReferenceValue(
                { tenant: 't1', tee: 'tdx', name: 'n', values: [] },
                logFields('refval'),
              ),
          ],
          ['appendLog', () => store.appendLog(logFields('release'))],
        ];
        for (const [what, attempt] of attempts) {
          log.failNext();
          await expect(attempt(), what).rejects.toThrow('test builder refuses');
        }
        expect(await store.logSize()).toBe(2);
        expect(await store.repositoryOwner('repo2')).toBeUndefined();
        expect(await store.getResource('repo1/key/b')).toBeUndefined();
        expect(await store.getResource('repo1/key/a')).toMatchObject({
          version: 1,
          secret: secret('mk1', 1),
        });
        expect(await store.listPolicies()).toEqual([]);
        expect(await store.listReferenceValues()).toEqual([]);
        // The store is still usable and the chain continues from where it was.
        await store.appendLog(logFields('release'));
        expectUnbrokenChain(await allEntries(store));
      });

      it('keeps the hash of every complete subtree, written with the entries that complete it', async () => {
        const { store, log } = await fresh();
        await store.createRepository('repo1', 't1', logFields('repository.create', 'repo1'));
        for (let i = 0; i < 6; i++) await store.appendLog(logFields('release', `one-${i}`));
        // A burst: the appends are group-committed, several entries per transaction.
        await Promise.all(
          Array.from({ length: 34 }, (_, i) => store.appendLog(logFields('release', `b-${i}`))),
        );
        log.failNext();
        await expect(store.appendLog(logFields('release'))).rejects.toThrow('test builder refuses');
        const leaves = (await allEntries(store)).map((e) => e.leafHash);
        expect(leaves).toHaveLength(41);
        const ids: { level: number; index: number }[] = [];
        for (let level = 1; level <= 6; level++) {
          for (let index = 0; index <= Math.floor(41 / 2 ** level); index++) ids.push({ level, index });
        }
        const got = await store.logNodes(ids);
        ids.forEach(({ level, index }, k) => {
          const [a, b] = [index * 2 ** level, (index + 1) * 2 ** level];
          // Complete subtrees are stored with their true hash; incomplete ones (the refused entry
          // included) are not stored at all.
          if (b <= 41) expect(hex(got[k]), `${level}/${index}`).toBe(hex(mth(leaves.slice(a, b))));
          else expect(got[k], `${level}/${index}`).toBeUndefined();
        });
        expect(await store.logNodes([])).toEqual([]);
      });

      it('a builder that returns no bytes is refused before anything is written', async () => {
        const store = await makeStore({
          buildLogEntry: () => ({ canonical: new Uint8Array(1), leafHash: new Uint8Array(0) }),
        });
        open.push(store);
        await expect(store.createRepository('r', 't', logFields('repository.create'))).rejects.toBeInstanceOf(
          TypeError,
        );
        expect(await store.repositoryOwner('r')).toBeUndefined();
        expect(await store.logSize()).toBe(0);
      });

      it('saves checkpoints within the log and returns the latest', async () => {
        const { store } = await fresh();
        for (let i = 0; i < 3; i++) await store.appendLog(logFields('release'));
        await store.saveCheckpoint(2, 'note-2');
        await store.saveCheckpoint(3, 'note-3');
        await store.saveCheckpoint(3, 'note-3b');
        expect(await store.latestCheckpoint()).toEqual({ size: 3, note: 'note-3b' });
        expect(await store.checkpoints()).toEqual([
          { size: 2, note: 'note-2' },
          { size: 3, note: 'note-3' },
          { size: 3, note: 'note-3b' },
        ]);
        await expect(store.saveCheckpoint(4, 'future')).rejects.toBeInstanceOf(RangeError);
        expect(await store.checkpoints()).toHaveLength(3);
      });
    });
  });
}
