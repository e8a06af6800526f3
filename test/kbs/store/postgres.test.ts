import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../../src/kbs/store/postgres.js';
import { StoreUnavailableError } from '../../../src/kbs/store/types.js';
import { until } from '../helpers.js';
import { expectAllNodes, expectUnbrokenChain, logFields, storeConformance, testLog } from './conformance.js';
import { POSTGRES_SCHEMA_V1, V1_ROWS } from './fixtures/schema-v1.js';
import { expectMigratedFromV1, expectMigratedLog, v1LogEntries } from './migration.js';

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

/** Runs `sql` on a connection of its own (never one of the stores under test). */
async function admin<R extends pg.QueryResultRow>(sql: string, values: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: URL, application_name: `${run}_admin` });
  await c.connect();
  try {
    return (await c.query<R>(sql, values)).rows;
  } finally {
    await c.end();
  }
}

/**
 * Terminates the server sessions named `app` (the stores under test), and only those: CASE fixes the
 * order (in a plain AND the planner may call pg_terminate_backend on every session first).
 */
const terminate = (app: string) =>
  admin<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity
     WHERE CASE WHEN application_name = $1 AND pid <> pg_backend_pid() THEN pg_terminate_backend(pid) ELSE false END`,
    [app],
  );

/**
 * A TCP proxy to the test server that cuts one connection at the first client message containing
 * `match`: `before` the server gets it, or `after` the server answered it (the answer is lost).
 */
async function cuttingProxy(): Promise<{
  url: string;
  cut(match: string, when: 'before' | 'after'): Promise<void>;
  close(): Promise<void>;
}> {
  const target = new globalThis.URL(URL);
  let armed: { match: Buffer; when: 'before' | 'after'; done: () => void } | undefined;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = tcpConnect(Number(target.port || 5432), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    let mute = false;
    const cutNow = (done: () => void) => {
      client.destroy();
      upstream.destroy();
      done();
    };
    client.on('data', (chunk: Buffer) => {
      const a = armed;
      if (a && chunk.includes(a.match)) {
        armed = undefined;
        if (a.when === 'before') return cutNow(a.done);
        // The server's next bytes answer this message: it has been executed; the client never hears.
        mute = true;
        upstream.once('data', () => cutNow(a.done));
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!mute) client.write(chunk);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const url = new globalThis.URL(URL);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return {
    url: url.toString(),
    cut: (match, when) =>
      new Promise<void>((done) => {
        armed = { match: Buffer.from(match), when, done };
      }),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
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

  it('migrates a version 1 schema: operator sentinels become the operator (NULL)', async () => {
    const schema = newSchema();
    const c = new pg.Client({ connectionString: URL });
    await c.connect();
    try {
      await c.query(`CREATE SCHEMA ${schema}; SET search_path = ${schema};`);
      await c.query(POSTGRES_SCHEMA_V1);
      await c.query(V1_ROWS("'\\x0102'::bytea"));
      await c.query('INSERT INTO schema_meta (id, version) VALUES (1, 1)');
    } finally {
      await c.end();
    }
    const s = await open(schema);
    try {
      await expectMigratedFromV1(s);
    } finally {
      await s.close();
    }
    const again = await open(schema);
    expect(await again.repositoryOwner('Shared')).toEqual({ tenant: null });
    await again.close();
    // As in a fresh version 2 schema, '' is never a tenant: NULL is the operator.
    const d = new pg.Client({ connectionString: URL });
    await d.connect();
    try {
      await d.query(`SET search_path = ${schema}`);
      await expect(d.query("UPDATE repositories SET tenant = '' WHERE name = 'acme'")).rejects.toThrow(
        /check constraint/,
      );
    } finally {
      await d.end();
    }
  });

  it('migrates a version 1 schema with a log in one step, once, when two replicas open it at once', async () => {
    const schema = newSchema();
    const entries = v1LogEntries(45);
    const c = new pg.Client({ connectionString: URL });
    await c.connect();
    try {
      await c.query(`CREATE SCHEMA ${schema}; SET search_path = ${schema};`);
      await c.query(POSTGRES_SCHEMA_V1);
      await c.query(V1_ROWS("'\\x0102'::bytea"));
      await c.query(
        'INSERT INTO log_entries (idx, canonical, leaf_hash) SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])',
        [
          entries.map((e) => e.index),
          entries.map((e) => Buffer.from(e.canonical)),
          entries.map((e) => Buffer.from(e.leafHash)),
        ],
      );
      await c.query('UPDATE log_head SET size = $1, leaf_hash = $2 WHERE id = 1', [
        entries.length,
        Buffer.from(entries.at(-1)!.leafHash),
      ]);
      await c.query('INSERT INTO schema_meta (id, version) VALUES (1, 1)');
    } finally {
      await c.end();
    }
    const [a, b] = await Promise.all([open(schema), open(schema)]);
    try {
      await expectMigratedLog(a, 45);
      await expectMigratedFromV1(a);
      await expectMigratedLog(b, 47);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
    // Opening again changes nothing.
    const again = await open(schema);
    try {
      await expectMigratedLog(again, 47);
      expect(await again.repositoryOwner('Shared')).toEqual({ tenant: null });
    } finally {
      await again.close();
    }
  });

  it('migrates a version 2 schema by adding the training tables', async () => {
    const schema = newSchema();
    const s = await open(schema);
    await s.close();
    const c = new pg.Client({ connectionString: URL, options: `-c search_path=${schema}` });
    await c.connect();
    try {
      await c.query('DROP TABLE train_receipt_recipients, train_receipts, train_checkpoints');
      await c.query('UPDATE schema_meta SET version = 2');
      const again = await open(schema);
      try {
        expect((await c.query('SELECT version FROM schema_meta')).rows[0].version).toBe(3);
        const cp = { number: 1, sha256: '1'.repeat(64) };
        expect(
          await again.advanceTrainCheckpoint('a'.repeat(64), null, cp, logFields('train-checkpoint')),
        ).toEqual({
          advanced: true,
        });
        expect(await again.trainCheckpoint('a'.repeat(64))).toEqual(cp);
      } finally {
        await again.close();
      }
    } finally {
      await c.end();
    }
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
        // Each replica reuses the range it left only while the head is still its own last entry.
        for (let i = 0; i < 6; i++) await [a, a, b, a, b, b][i]!.appendLog(logFields('release', `s${i}`));
        await expectAllNodes(a);
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
        expect((await c.query('SELECT version FROM schema_meta')).rows[0].version).toBe(3);
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

  describe('PostgresStore when connections are lost', () => {
    /** A store whose sessions carry an application_name of their own, so a test can end only them. */
    const named = async (schema: string, app: string, url = URL) => {
      const s = new PostgresStore(`${url}?application_name=${app}`, {
        buildLogEntry: testLog().build,
        schema,
        poolSize: 4,
      });
      await s.migrate();
      return s;
    };

    it('survives its connection being terminated inside a transaction, and retries it', async () => {
      const schema = newSchema();
      const app = `${schema}_store`;
      const s = await named(schema, app);
      // Hold the log head so that the store's append waits inside its transaction, checked out.
      const holder = new pg.Client({ connectionString: URL, application_name: `${run}_holder` });
      holder.on('error', () => {});
      await holder.connect();
      try {
        await holder.query('BEGIN');
        await holder.query(`SELECT * FROM ${schema}.log_head WHERE id = 1 FOR UPDATE`);
        const append = s.appendLog(logFields('release', 'r0'));
        await until(async () => {
          const waiting = await admin(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            [app],
          );
          return waiting.length > 0 ? true : undefined;
        }, 'the append to wait for the log head');
        // Without an 'error' listener on the checked-out client, this ends the process (57P01).
        expect((await terminate(app)).length).toBeGreaterThan(0);
        await holder.query('COMMIT');
        expect((await append).index).toBe(0);
        expect(await s.logSize()).toBe(1);
        expectUnbrokenChain(await s.logEntries(0, 1));
      } finally {
        await holder.end();
        await s.close();
      }
    });

    for (const when of ['after', 'before'] as const) {
      it(`applies a change once when its COMMIT's answer is lost (${when} the server got it)`, async () => {
        const schema = newSchema();
        const proxy = await cuttingProxy();
        const s = await named(schema, `${schema}_store`, proxy.url);
        try {
          await s.createRepository('repo', 't1', logFields('repository.create', 'repo'));
          await s.putResource(
            {
              path: 'repo/key/a',
              repository: 'repo',
              type: 'key',
              tag: 'a',
              tenant: 't1',
              size: 1,
              contentType: 'application/octet-stream',
              secret: { masterKeyId: 'k1', ciphertext: new Uint8Array([1]) },
            },
            logFields('resource.put', 'repo/key/a'),
          );
          const cut = proxy.cut('COMMIT', when);
          const meta = await s.rotateResource(
            'repo/key/a',
            { masterKeyId: 'k1', ciphertext: new Uint8Array([2]) },
            1,
            logFields('resource.rotate', 'repo/key/a'),
          );
          await cut;
          // Once, whichever way the lost COMMIT went: a blind retry after a landed COMMIT would make
          // version 3 and a second log entry.
          expect(meta.version).toBe(2);
          expect((await s.getResource('repo/key/a'))!.version).toBe(2);
          expect(await s.logSize()).toBe(3);
          expectUnbrokenChain(await s.logEntries(0, 3));
        } finally {
          await s.close();
          await proxy.close();
        }
      });
    }

    it('reports a single write whose answer is lost as outcome-unknown, and does not repeat it', async () => {
      const schema = newSchema();
      const proxy = await cuttingProxy();
      const s = await named(schema, `${schema}_store`, proxy.url);
      try {
        await s.createSession({
          id: 's1',
          tee: 'sample',
          nonce: 'n',
          status: 'challenged',
          expiresAt: '2099-01-01T00:00:00Z',
        });
        const cut = proxy.cut('ses_attest', 'after');
        const err = await s.markAttested('s1', 'token', 'key').catch((e: unknown) => e);
        await cut;
        expect(err).toBeInstanceOf(StoreUnavailableError);
        expect(err).toMatchObject({ code: 'outcome-unknown' });
        expect(await s.getSession('s1')).toMatchObject({ status: 'attested', token: 'token' });
      } finally {
        await s.close();
        await proxy.close();
      }
    });

    it('fails with StoreUnavailableError once retryForMs has passed without a database', async () => {
      // A port nothing listens on.
      const closed = createServer();
      await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
      const port = (closed.address() as { port: number }).port;
      await new Promise((r) => closed.close(r));
      const url = new globalThis.URL(URL);
      url.hostname = '127.0.0.1';
      url.port = String(port);
      const s = new PostgresStore(url.toString(), { buildLogEntry: testLog().build, retryForMs: 300 });
      try {
        for (const op of [
          () => s.appendLog(logFields('release')),
          () => s.getResource('repo/key/a'),
          () => s.markAttested('s1', 't', 'k'),
        ]) {
          const err = await op().catch((e: unknown) => e);
          expect(err).toBeInstanceOf(StoreUnavailableError);
          expect(err).toMatchObject({ code: 'unavailable', message: /ECONNREFUSED/ });
        }
        await expect(s.ping()).rejects.toMatchObject({ code: 'ECONNREFUSED' });
      } finally {
        await s.close();
      }
    });
  });
});
