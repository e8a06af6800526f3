/**
 * The core KBS flow (sample TEE in dev mode) against each store backend: SQLite and PostgreSQL (a fresh
 * schema per run, dropped at the end). Set CLOISTER_TEST_PG=skip on a machine without PostgreSQL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient, KbsClientError } from '../../src/tee/kbs-client.js';
import { PG_ENABLED, pgSchema, sampleAttester, type TestBroker, testBroker } from './helpers.js';

const SECRET = new TextEncoder().encode('the model key');

interface Backend {
  name: string;
  enabled: boolean;
  /** The store URL (undefined: the helper's SQLite file) and how to clean it up. */
  db(): { url?: string; drop(): Promise<void> };
}

const BACKENDS: Backend[] = [
  { name: 'sqlite', enabled: true, db: () => ({ drop: async () => {} }) },
  { name: 'postgres', enabled: PG_ENABLED, db: pgSchema },
];

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`KBS core flow on ${backend.name}`, () => {
    let b: TestBroker;
    let db: ReturnType<Backend['db']>;
    beforeAll(async () => {
      db = backend.db();
      // bearerTokens: the bearer path is part of the flow each backend must carry.
      b = await testBroker({ devMode: true, bearerTokens: true, ...(db.url ? { db: db.url } : {}) });
      const admin = await b.admin();
      expect((await b.call('PUT', '/admin/v1/resources/owner/models/kek1', admin, SECRET)).status).toBe(201);
      expect((await b.call('PUT', '/admin/v1/resources/owner/models/locked', admin, SECRET)).status).toBe(
        201,
      );
      const set = await b.call('PUT', '/admin/v1/policies', admin, {
        scope: 'resource:owner/models/locked',
        source: 'cpu.claims.measurement == "00"',
      });
      expect(set.status).toBe(200);
    });
    afterAll(async () => {
      await b?.close();
      await db?.drop();
    });

    it('puts a resource and releases it to the sample TEE', async () => {
      const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
      expect(new TextDecoder().decode(await client.getResource('owner/models/kek1'))).toBe('the model key');
      const log = await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json();
      expect(log.entries.at(-1)).toMatchObject({ kind: 'release', subject: 'owner/models/kek1' });
    });

    it('denies by policy and logs the reasons', async () => {
      const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
      const err = await client.getResource('owner/models/locked').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KbsClientError);
      expect(err).toMatchObject({ status: 403, type: 'denied' });
      const log = await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json();
      const denial = log.entries.at(-1);
      expect(denial).toMatchObject({ kind: 'denial', subject: 'owner/models/locked' });
      expect(JSON.stringify(denial.details.reasons)).toMatch(/measurement/);
    });

    it('releases with the attestation token as a bearer token, and refuses a forged one', async () => {
      const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
      const token = await client.token();
      const get = (t: string) =>
        fetch(new URL('/kbs/v0/resource/owner/models/kek1', b.url), {
          headers: { authorization: `Bearer ${t}` },
        });
      const ok = await get(token);
      expect(ok.status).toBe(200);
      expect((await ok.json()).ciphertext).toBeTruthy();
      const [h, p, s] = token.split('.');
      const forged = await get(`${h}.${p}.${s!.slice(0, -4)}AAAA`);
      expect(forged.status).toBe(401);
      expect((await forged.json()).type).toMatch(/bad-token/);
    });
  });
}
