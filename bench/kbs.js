#!/usr/bin/env node
/**
 * Key-broker releases per second: full KBS protocol releases (auth → attest → resource) by 64
 * concurrent closed-loop clients on loopback for BENCH_SECONDS (default 20), each release a fresh
 * session with its own TDX quote from the Intel test authority (report data bound to the session's
 * nonce and key, so no quote can be reused). The broker (SQLite store, rate limit off) runs in its own
 * process, bench/kbs-server.js; the clients share this one. In the same run: the same server's
 * `/healthz` throughput with the same concurrency, as the ceiling of the HTTP stack alone, and the
 * client's cost of issuing one quote.
 *
 * Run with `npm run bench:kbs` (builds first). BENCH_CONCURRENCY overrides 64, BENCH_HEALTHZ_SECONDS
 * the /healthz phase (default 10), BENCH_BROKER_ARGS adds node flags to the broker (profiling). Progress on stderr; the last stdout line is one JSON object.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';

const { createIntelTestAuthority } = await import('../dist/attest/testing/intel.js');
const { tdxVerifier } = await import('../dist/attest/tdx/index.js');
const { KbsClient } = await import('../dist/tee/kbs-client.js');

const SECONDS = Number(process.env.BENCH_SECONDS ?? 20);
const HEALTHZ_SECONDS = Number(process.env.BENCH_HEALTHZ_SECONDS ?? 10);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const log = (s) => process.stderr.write(`${s}\n`);
const day = 86_400_000;

// ---- the test authority and its collateral, as files for the broker --------------------------------

const authority = await createIntelTestAuthority();
const now = Date.now();
const source = await authority.collateral({
  issueDate: new Date(now - day),
  nextUpdate: new Date(now + 30 * day),
});
const dir = mkdtempSync(join(tmpdir(), 'cloister-bench-kbs-'));
mkdirSync(join(dir, 'collateral'));
writeFileSync(join(dir, 'tdx-root.der'), authority.trustAnchors[0]);
// Every answer the verifier asks for, written under its offline file name (headers in the sidecar
// directorySource reads), so the broker serves collateral as one configured with `collateral.dir`.
const recorder = {
  async get(req) {
    const item = await source.get(req);
    if (item) {
      writeFileSync(join(dir, 'collateral', req.files[0]), item.body);
      if (Object.keys(item.headers).length)
        writeFileSync(join(dir, 'collateral', `${req.files[0]}.headers.json`), JSON.stringify(item.headers));
    }
    return item;
  },
};
const probe = await tdxVerifier.appraiseEvidence(await authority.issueTdxQuote({}), {
  at: new Date(now),
  collateral: recorder,
  trustAnchors: authority.trustAnchors,
});
log(`test-authority TDX quote: ${probe.status}; collateral written to ${dir}/collateral`);

// ---- the broker process ------------------------------------------------------------------------------

// BENCH_BROKER_ARGS passes node flags to the broker, e.g. "--cpu-prof --cpu-prof-dir=prof".
const brokerArgs = (process.env.BENCH_BROKER_ARGS ?? '').split(' ').filter(Boolean);
const server = spawn(process.execPath, [...brokerArgs, join(import.meta.dirname, 'kbs-server.js'), dir], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
const replies = createInterface({ input: server.stdout });
const pending = [];
replies.on('line', (l) => pending.shift()?.(JSON.parse(l)));
const next = () => new Promise((resolve) => pending.push(resolve));
server.on('exit', (code) => {
  if (code) {
    log(`broker process exited with ${code}`);
    process.exit(1);
  }
});
const { url, resource } = await next();
const serverCpu = async () => {
  server.stdin.write('stats\n');
  return (await next()).cpu_ms;
};
log(`broker at ${url} (pid ${server.pid}); ${CONCURRENCY} clients`);

// ---- the load ----------------------------------------------------------------------------------------

const attester = {
  tee: 'tdx',
  async primaryEvidence(reportData) {
    const quote = await authority.issueTdxQuote({ reportData });
    return { quote: Buffer.from(quote).toString('base64') };
  },
};

/** Runs `once` in CONCURRENCY closed loops for `seconds`; returns latencies (ms) and failures. */
async function closedLoop(seconds, once) {
  const latencies = [];
  let failures = 0;
  let firstError;
  const end = performance.now() + seconds * 1000;
  const loop = async () => {
    while (performance.now() < end) {
      const t = performance.now();
      try {
        await once();
        latencies.push(performance.now() - t);
      } catch (e) {
        failures++;
        firstError ??= e;
      }
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, loop));
  const elapsed = (performance.now() - t0) / 1000;
  if (firstError) log(`${failures} failures; first: ${firstError.message}`);
  return { latencies, failures, elapsed };
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

async function phase(name, seconds, once) {
  const cpu0 = process.cpuUsage();
  const s0 = await serverCpu();
  const r = await closedLoop(seconds, once);
  const s1 = await serverCpu();
  const c = process.cpuUsage(cpu0);
  const sorted = r.latencies.sort((a, b) => a - b);
  const out = {
    per_s: sorted.length / r.elapsed,
    p50_ms: pct(sorted, 50),
    p99_ms: pct(sorted, 99),
    count: sorted.length,
    failures: r.failures,
    server_cpu_ms_per_op: (s1 - s0) / Math.max(1, sorted.length),
    client_cpu_ms_per_op: (c.user + c.system) / 1000 / Math.max(1, sorted.length),
  };
  log(
    `${name}: ${out.per_s.toFixed(0)}/s, p50 ${out.p50_ms.toFixed(1)} ms, p99 ${out.p99_ms.toFixed(1)} ms, ` +
      `${out.count} ok, ${out.failures} failed; CPU per op: broker ${out.server_cpu_ms_per_op.toFixed(3)} ms, ` +
      `clients ${out.client_cpu_ms_per_op.toFixed(3)} ms`,
  );
  return out;
}

// Warm-up: JIT, SQLite pages, verifier caches on both sides.
await closedLoop(2, () => new KbsClient({ url, attester, retries: 1 }).getResource(resource));

const load0 = loadavg()[0];
const healthz = await phase('/healthz', HEALTHZ_SECONDS, async () => {
  const r = await fetch(new URL('/healthz', url));
  if (r.status !== 200) throw new Error(`/healthz answered ${r.status}`);
  await r.arrayBuffer();
});
const release = await phase('release', SECONDS, async () => {
  const value = await new KbsClient({ url, attester, retries: 1 }).getResource(resource);
  if (value.length !== 13) throw new Error('the released value is not the stored one');
});

// What issuing one quote costs the client, measured alone (sequentially, after the load).
const n = 500;
const t = performance.now();
for (let i = 0; i < n; i++)
  await authority.issueTdxQuote({ reportData: crypto.getRandomValues(new Uint8Array(64)) });
const quoteMs = (performance.now() - t) / n;

server.stdin.write('exit\n');
await new Promise((r) => server.once('exit', r));
rmSync(dir, { recursive: true, force: true });

const result = {
  bench: 'kbs',
  releases_per_s: release.per_s,
  p50_ms: release.p50_ms,
  p99_ms: release.p99_ms,
  concurrency: CONCURRENCY,
  seconds: SECONDS,
  releases: release.count,
  failures: release.failures,
  healthz_rps: healthz.per_s,
  healthz_p99_ms: healthz.p99_ms,
  releases_vs_healthz: release.per_s / healthz.per_s,
  broker_cpu_ms_per_release: release.server_cpu_ms_per_op,
  client_cpu_ms_per_release: release.client_cpu_ms_per_op,
  client_quote_ms: quoteMs,
  cpu: cpus()[0]?.model,
  cores: cpus().length,
  loadavg_1m_start: load0,
  loadavg_1m_end: loadavg()[0],
};
console.log(JSON.stringify(result));
