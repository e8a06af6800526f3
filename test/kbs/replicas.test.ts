/**
 * Two broker replicas on one PostgreSQL schema, sharing the master key, the EAR signing key and the
 * checkpoint key: sessions move between them, 50 clients released at once across both, and the
 * transparency log they write together stays one unbroken, verifiable chain.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { verifyBundle } from '../../src/translog/index.js';
import {
  PG_ENABLED,
  pgSchema,
  sampleAttester,
  type TestBroker,
  type TestKeys,
  testBroker,
  testKeys,
} from './helpers.js';

const SECRET = new TextEncoder().encode('shared replica secret');

/** A fetch that sends each request to replica A or B by the given route. */
function routed(a: TestBroker, b: TestBroker, route: (path: string) => 'a' | 'b'): typeof fetch {
  return (input, init) => {
    const u = new URL(input instanceof Request ? input.url : String(input));
    const target = new URL(route(u.pathname) === 'a' ? a.url : b.url);
    u.host = target.host;
    return fetch(u, init);
  };
}

describe.skipIf(!PG_ENABLED)('two replicas on one PostgreSQL', () => {
  let db: ReturnType<typeof pgSchema>;
  let keys: TestKeys;
  let a: TestBroker;
  let b: TestBroker;
  beforeAll(async () => {
    db = pgSchema();
    keys = await testKeys();
    a = await testBroker({ devMode: true, db: db.url }, { keys });
    b = await testBroker({ devMode: true, db: db.url }, { keys });
    expect(a.logVerifierKey).toBe(keys.logVkey);
    expect(b.logVerifierKey).toBe(keys.logVkey);
    const r = await a.call('PUT', '/admin/v1/resources/owner/models/shared', await a.admin(), SECRET);
    expect(r.status).toBe(201);
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await db?.drop();
  });

  it('continues a session across replicas: auth on A, attest on B, resource from A', async () => {
    const seen: string[] = [];
    const client = new KbsClient({
      url: a.url,
      attester: await sampleAttester(),
      fetch: routed(a, b, (p) => {
        const to = p === '/kbs/v0/attest' ? 'b' : 'a';
        seen.push(`${p.split('/')[3]}@${to}`);
        return to;
      }),
    });
    expect(new TextDecoder().decode(await client.getResource('owner/models/shared'))).toBe(
      'shared replica secret',
    );
    expect(seen).toEqual(['auth@a', 'attest@b', 'resource@a']);
  });

  it('releases to 50 concurrent clients spread over both replicas', async () => {
    const before = Number(
      (await (await a.call('GET', '/admin/v1/log/entries', await a.admin())).json()).size,
    );
    const results = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const client = new KbsClient({
          url: a.url,
          attester: await sampleAttester(),
          // Every client attests on the other replica than the one it authenticates and fetches on.
          fetch: routed(a, b, (p) => ((i % 2 === 0) === (p === '/kbs/v0/attest') ? 'a' : 'b')),
        });
        return new TextDecoder().decode(await client.getResource('owner/models/shared'));
      }),
    );
    expect(results).toEqual(Array(50).fill('shared replica secret'));
    const log = await (await b.call('GET', `/admin/v1/log/entries?from=${before}`, await b.admin())).json();
    expect(log.entries.filter((e: { kind: string }) => e.kind === 'release')).toHaveLength(50);
  });

  it('leaves one unbroken log that verifies against the shared checkpoint key', async () => {
    for (const replica of [a, b]) {
      const r = await replica.call(
        'GET',
        '/admin/v1/log/bundle?proofs=all',
        await replica.admin('global-auditor'),
      );
      expect(r.status).toBe(200);
      const report = await verifyBundle(await r.text(), replica.logVerifierKey);
      expect(report.errors).toEqual([]);
      expect(report.ok).toBe(true);
      // repository + resource-put + 1 + 50 releases
      expect(report.entries).toEqual({ from: 0, to: 53 });
    }
  });
});
