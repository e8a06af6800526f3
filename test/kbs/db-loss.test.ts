/**
 * The broker on PostgreSQL while its database connections are terminated (pg_terminate_backend) under
 * load: the process lives on, every request gets a success or a 503 with Retry-After, acknowledged
 * writes are all there afterwards, and the transparency log still verifies. Only the broker's own
 * connections are terminated: they carry an application_name of this test's own.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkAfterLoad, prepareLoad, runLoad } from './db-load.js';
import { PG_ENABLED, PG_URL, pgSchema, type TestBroker, testBroker } from './helpers.js';

describe.skipIf(!PG_ENABLED)('broker on PostgreSQL while its connections are terminated', () => {
  const app = `cloister_kbs_loss_${crypto.getRandomValues(new Uint32Array(1))[0]}`;
  let db: ReturnType<typeof pgSchema>;
  let b: TestBroker;
  let killer: pg.Client;
  beforeAll(async () => {
    db = pgSchema();
    b = await testBroker({ devMode: true, db: `${db.url}&application_name=${app}` });
    killer = new pg.Client({ connectionString: PG_URL, application_name: `${app}_killer` });
    await killer.connect();
    await prepareLoad(b);
  });
  afterAll(async () => {
    await killer?.end();
    await b?.close();
    await db?.drop();
  });

  /** Terminates the broker's sessions, and only those (CASE keeps the filter ahead of the call). */
  const terminate = async () =>
    (
      await killer.query(
        `SELECT pid FROM pg_stat_activity
         WHERE CASE WHEN application_name = $1 THEN pg_terminate_backend(pid) ELSE false END`,
        [app],
      )
    ).rowCount ?? 0;

  it('survives, answers success or 503, keeps every acknowledged write and a verifiable log', async () => {
    let running = true;
    let kills = 0;
    const killing = (async () => {
      while (running) {
        kills += await terminate();
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const load = runLoad(b, { running: () => running, workers: 6, minRounds: 8 });
    // Long enough for many terminations to land mid-transaction, mid-COMMIT and between requests.
    await new Promise((r) => setTimeout(r, 3000));
    running = false;
    const result = await load;
    await killing;
    expect(kills).toBeGreaterThan(0);
    expect(result.releases).toBeGreaterThan(0);
    await checkAfterLoad(b, result);
    const ready = await fetch(new URL('/readyz', b.url));
    expect(ready.status).toBe(200);
  });
});
