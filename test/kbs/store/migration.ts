/** What every backend's migration from schema version 1 must give (see fixtures/schema-v1.ts). */
import { expect } from 'vitest';
import type { KbsStore, StoredLogEntry } from '../../../src/kbs/store/types.js';
import { expectAllNodes, expectUnbrokenChain, logFields, testLog } from './conformance.js';

/** A chain of log entries as version 1 stored them (no subtree hashes were kept then). */
export function v1LogEntries(n: number): StoredLogEntry[] {
  const { build } = testLog();
  const out: StoredLogEntry[] = [];
  for (let index = 0; index < n; index++) {
    const e = build(index, out.at(-1)?.leafHash, logFields('release', `v1-${index}`));
    out.push({ index, canonical: e.canonical, leafHash: e.leafHash });
  }
  return out;
}

/** The log of `v1LogEntries(n)` after migration: the same chain, every subtree hash stored and right. */
export async function expectMigratedLog(store: KbsStore, n: number): Promise<void> {
  expect(await store.logSize()).toBe(n);
  expectUnbrokenChain(await store.logEntries(0, n));
  await expectAllNodes(store);
}

export async function expectMigratedFromV1(store: KbsStore): Promise<void> {
  expect(await store.repositoryOwner('Shared')).toEqual({ tenant: null });
  expect(await store.repositoryOwner('acme')).toEqual({ tenant: 'acme' });
  expect((await store.listResources()).map((r) => [r.path, r.tenant])).toEqual([
    ['Shared/k/a', null],
    ['acme/k/a', 'acme'],
  ]);
  expect((await store.getPolicy({ kind: 'default' }))?.tenant).toBeNull();
  expect((await store.getPolicy({ kind: 'repository', repository: 'Shared' }))?.tenant).toBeNull();
  for (const sentinel of ['default', '*']) {
    expect(await store.listResources(sentinel)).toEqual([]);
    expect(await store.listPolicies(sentinel)).toEqual([]);
  }
  expect((await store.listReferenceValues({ tenant: null })).map((r) => r.id)).toEqual(['r1']);
  expect((await store.listReferenceValues({ tenant: '*' })).map((r) => r.id)).toEqual([]);
  // `default`'s values stay inert rather than become operator-wide.
  expect((await store.listReferenceValues({ tenant: 'default' })).map((r) => r.id)).toEqual(['r2']);
  expect((await store.listReferenceValues({ tenant: 'acme' })).map((r) => r.id)).toEqual(['r3']);
  // The operator's history goes on from the migrated version, and new tables exist.
  const next = await store.addReferenceValue(
    { tenant: null, tee: 'tdx', name: 'mr_td', values: ['dd'] },
    logFields('refval.add', 'x', null),
  );
  expect(next.version).toBe(2);
  await store.revokeAdminToken({ tokenId: 'j', actor: 'a' }, logFields('admin-token-revoke', 'j', null));
  expect(await store.isAdminTokenRevoked('j')).toBe(true);
}
