/** What every backend's migration from schema version 1 must give (see fixtures/schema-v1.ts). */
import { expect } from 'vitest';
import type { KbsStore } from '../../../src/kbs/store/types.js';
import { logFields } from './conformance.js';

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
