import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../../src/kbs/store/postgres.js';
import { expectAllNodes, expectUnbrokenChain, logFields, storeConformance, testLog } from './conformance.js';

// CLOISTER_TEST_PG names the test server; `skip` leaves these tests out (a machine without PostgreSQL).
const URL = process.env.CLOISTER_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
const enabled = URL !== 'skip';

// Every store gets its own schema, all under one random prefix for this run, dropped at the end.
const run = `cloister_test_${randomBytes(4).toString('hex')}`;
const schemas: string[] = [];
const newSchema = () => {
  const s = `${run}_${schemas.length}`;
  schemas.push(s);
  return s;
};

afterAll(async () => {
  if (!enabled || schemas.length === 0) return;
  const c = new pg.Client({ connectionString: URL });
  await c.connect();
  try {
    for (const s of schemas) await c.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  } finally {
    await c.end();
  }
});

async function open(schema: string, build = testLog().build, poolSize?: number): Promise<PostgresStore> {
  const s = new PostgresStore(URL, {
    buildLogEntry: build,
    schema,
    ...(poolSize !== undefined && { poolSize }),
  });
  await s.migrate();
  return s;
}

describe.skipIf(!enabled)('postgres', () => {
  beforeAll(async () => {
    const c = new pg.Client({ connectionString: URL });
    await c.connect().catch((e: Error) => {
      throw new Error(
        `PostgreSQL at ${URL} is not reachable (${e.message}); set CLOISTER_TEST_PG=skip to leave these tests out`,
      );
    });
    await c.end();
  });

  storeConformance('postgres', (opts) => {
    const s = new PostgresStore(URL, { ...opts, schema: newSchema(), poolSize: 4 });
    return s.migrate().then(() => s);
  });

  describe('PostgresStore across replicas', () => {
    it('two pools appending 200 entries at once produce one contiguous, unbroken chain', async () => {
      const schema = newSchema();
      const [a, b] = await Promise.all([open(schema, testLog().build, 8), open(schema, testLog().build, 8)]);
      try {
        const appends = Array.from({ length: 200 }, (_, i) =>
          (i % 2 === 0 ? a : b).appendLog(logFields('release', `r${i}`)),
        );
        const got = await Promise.all(appends);
        expect(got.map((e) => e.index).sort((x, y) => x - y)).toEqual(
          Array.from({ length: 200 }, (_, i) => i),
        );
        expect(await a.logSize()).toBe(200);
        expectUnbrokenChain(await b.logEntries(0, 200));
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    it('admin changes from two replicas interleave into the same chain without lost versions', async () => {
      const schema = newSchema();
      const [a, b] = await Promise.all([open(schema), open(schema)]);
      try {
        await a.createRepository('repo1', 't1', logFields('repository.create'));
        const scope = { kind: 'repository' as const, repository: 'repo1' };
        const set = (s: PostgresStore, i: number) =>
          s.setPolicy({ scope, tenant: 't1', source: `v${i}`, actor: 'x' }, logFields('policy.set'));
        const got = await Promise.all(Array.from({ length: 20 }, (_, i) => set(i % 2 ? a : b, i)));
        expect(got.map((p) => p.version).sort((x, y) => x - y)).toEqual(
          Array.from({ length: 20 }, (_, i) => i + 1),
        );
        // Racing creations of one repository: exactly one wins, the other is a conflict.
        const race = await Promise.allSettled([
          a.createRepository('shared', 't1', logFields('repository.create')),
          b.createRepository('shared', 't2', logFields('repository.create')),
        ]);
        expect(race.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expectUnbrokenChain(await a.logEntries(0, await b.logSize()));
        expect(await b.logSize()).toBe(22);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    it('a session started on one replica continues on another; attestation is compare-and-set across them', async () => {
      const schema = newSchema();
      const [a, b] = await Promise.all([open(schema), open(schema)]);
      try {
        await a.createSession({
          id: 's1',
          tee: 'sample',
          nonce: 'n',
          status: 'challenged',
          expiresAt: '2099-01-01T00:00:00Z',
        });
        expect((await b.getSession('s1'))!.status).toBe('challenged');
        const results = await Promise.all([
          a.markAttested('s1', 'ta', 'ka'),
          b.markAttested('s1', 'tb', 'kb'),
          a.markAttested('s1', 'tc', 'kc'),
          b.markAttested('s1', 'td', 'kd'),
        ]);
        expect(results.filter(Boolean)).toHaveLength(1);
        expect((await a.getSession('s1'))!.status).toBe('attested');
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    it('rebuilds the subtree hashes of a log written before they were kept, on migrate and on append', async () => {
      const schema = newSchema();
      const s = await open(schema);
      await Promise.all(Array.from({ length: 37 }, (_, i) => s.appendLog(logFields('release', `e${i}`))));
      const c = new pg.Client({ connectionString: URL, options: `-c search_path=${schema}` });
      await c.connect();
      try {
        // A database of schema version 1: no log_nodes table.
        await c.query('DROP TABLE log_nodes');
        await c.query('UPDATE schema_meta SET version = 1');
        const again = await open(schema);
        await expectAllNodes(again);
        expect((await c.query('SELECT version FROM schema_meta')).rows[0].version).toBe(2);
        // An older replica appended entries 32… without subtree hashes: the next append rebuilds them.
        await c.query('DELETE FROM log_nodes WHERE (idx + 1) * (1::bigint << level) > 32');
        await again.appendLog(logFields('release', 'after'));
        await expectAllNodes(again);
        expectUnbrokenChain(await again.logEntries(0, 38));
        await Promise.all([s.close(), again.close()]);
      } finally {
        await c.end();
      }
    });

    it('takes the schema from ?schema= and refuses an unsafe schema name', async () => {
      const schema = newSchema();
      const s = new PostgresStore(`${URL}?schema=${schema}`, { buildLogEntry: testLog().build });
      await s.migrate();
      await s.appendLog(logFields('release'));
      await s.close();
      const again = await open(schema);
      expect(await again.logSize()).toBe(1);
      await again.close();
      expect(
        () => new PostgresStore(URL, { buildLogEntry: testLog().build, schema: 'x; DROP TABLE y' }),
      ).toThrow(/schema name/);
    });
  });
});
