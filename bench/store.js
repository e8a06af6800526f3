#!/usr/bin/env node
/**
 * Key-broker store throughput (npm run build && node bench/store.js): log appends per second and key
 * releases per second (a release = session insert + markAttested + one log append, as the broker does
 * it) for SQLite with synchronous=FULL and NORMAL, and PostgreSQL with several requests in flight.
 * BENCH_SECONDS sets each measurement's length (default 2), BENCH_DIR where the SQLite file lives
 * (default the OS temp dir: a real disk, since fsync cost is the point), BENCH_PG the server
 * (default postgres://postgres@127.0.0.1:5432/test; `skip` leaves it out). The last line is one JSON object.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';

const { SqliteStore, PostgresStore } = await import('../dist/kbs/store/index.js');

const seconds = Number(process.env.BENCH_SECONDS ?? 2);
const pgUrl = process.env.BENCH_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
const dir = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'cloister-bench-store-'));
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);

// Close to the broker's own builder: JSON bytes of the entry and SHA-256(0x00 ‖ bytes).
const build = (index, prev, fields) => {
  const canonical = new TextEncoder().encode(
    JSON.stringify({
      index,
      prev: prev ? Buffer.from(prev).toString('hex') : null,
      time: new Date().toISOString(),
      ...fields,
    }),
  );
  return {
    canonical,
    leafHash: new Uint8Array(createHash('sha256').update(Uint8Array.of(0)).update(canonical).digest()),
  };
};
const fields = (subject) => ({
  kind: 'release',
  tenant: 't1',
  actor: 'tee',
  subject,
  details: { tee: 'tdx' },
});

let seq = 0;
async function release(store) {
  const id = `s${seq++}-${randomBytes(4).toString('hex')}`;
  await store.createSession({
    id,
    tee: 'tdx',
    nonce: 'bm9uY2U=',
    status: 'challenged',
    expiresAt: '2099-01-01T00:00:00.000Z',
  });
  if (!(await store.markAttested(id, 'ear-token', '{"kty":"EC"}'))) throw new Error('markAttested lost');
  await store.appendLog(fields(`repo/key/${id}`));
}
const append = (store) => store.appendLog(fields('repo/key/a'));

/** Runs `op` with `inFlight` callers for the configured time; returns operations per second. */
async function rate(op, inFlight) {
  let n = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        await op();
        n++;
      }
    }),
  );
  return Math.round(n / ((performance.now() - t0) / 1000));
}

const results = {};

for (const synchronous of ['FULL', 'NORMAL']) {
  const store = new SqliteStore(join(dir, `${synchronous}.db`), { buildLogEntry: build, synchronous });
  await store.migrate();
  const key = `sqlite_${synchronous.toLowerCase()}`;
  results[key] = {};
  for (const inFlight of [1, 16]) {
    const a = await rate(() => append(store), inFlight);
    const r = await rate(() => release(store), inFlight);
    results[key][`in_flight_${inFlight}`] = { appends_per_s: a, releases_per_s: r };
    log(`sqlite synchronous=${synchronous}, ${inFlight} in flight: ${a} appends/s, ${r} releases/s`);
  }
  await store.close();
}

if (pgUrl !== 'skip') {
  const schema = `cloister_bench_${randomBytes(4).toString('hex')}`;
  const mk = () => new PostgresStore(pgUrl, { buildLogEntry: build, schema, poolSize: 16 });
  const a = mk();
  const b = mk();
  try {
    await a.migrate();
    await b.migrate();
    results.postgres = {};
    for (const inFlight of [1, 16, 64]) {
      const ap = await rate(() => append(a), inFlight);
      const rel = await rate(() => release(a), inFlight);
      results.postgres[`in_flight_${inFlight}`] = { appends_per_s: ap, releases_per_s: rel };
      log(`postgres, ${inFlight} in flight: ${ap} appends/s, ${rel} releases/s`);
    }
    // Two replicas (two pools) sharing the log.
    let i = 0;
    const two = await rate(() => release(i++ % 2 ? a : b), 64);
    results.postgres.two_replicas_in_flight_64 = { releases_per_s: two };
    log(`postgres, two replicas, 64 in flight: ${two} releases/s`);
  } finally {
    await a.close();
    await b.close();
    const c = new pg.Client({ connectionString: pgUrl });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await c.end();
  }
}

rmSync(dir, { recursive: true, force: true });
console.log(
  JSON.stringify({
    bench: 'store',
    seconds,
    cores: availableParallelism(),
    // Other work on the machine skews these figures; the load average says how much there was.
    load: loadavg()[0],
    ...results,
  }),
);
