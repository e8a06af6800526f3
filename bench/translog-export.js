#!/usr/bin/env node
/**
 * Audit export throughput of the key broker's log (npm run build first; BENCH_ENTRIES sets the log size,
 * default 1e5): a SQLite store (synchronous=NORMAL, so filling it is quick) holding that many entries is
 * exported with every inclusion proof and every consistency proof (`GET /admin/v1/log/bundle?proofs=all`
 * without HTTP), then the bundle is verified. Reports entries per second for each, the bundle's size and
 * the peak heap. Baseline in the same run: the same export without proofs (entries and checkpoints
 * only, what any log dump costs); `proofs_vs_plain` is full-proof export speed over that floor. The last
 * line is one JSON object. BENCH_DIST points at another build (e.g. an older one).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';

const dist = resolve(process.env.BENCH_DIST ?? new URL('../dist', import.meta.url).pathname);
const lib = (p) => import(pathToFileURL(join(dist, p)).href);
const { SqliteStore } = await lib('kbs/store/sqlite.js');
const { buildLogEntry, KbsLogStore, signCheckpointNow } = await lib('kbs/log.js');
const translog = await lib('translog/index.js');

const n = Number(process.env.BENCH_ENTRIES ?? 1e5);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const dir = mkdtempSync(join(tmpdir(), 'cloister-bench-'));
let peak = 0;
const sample = setInterval(() => {
  peak = Math.max(peak, process.memoryUsage().heapUsed);
}, 20);
try {
  const { signer, vkey } = await translog.generateNoteSigner('bench.example/log');
  const store = new SqliteStore(join(dir, 'kbs.db'), { buildLogEntry, synchronous: 'NORMAL' });
  const logStore = new KbsLogStore(store);
  await store.migrate();
  log(`filling a log of ${n} entries`);
  for (let i = 0; i < n; i += 2000) {
    await Promise.all(
      Array.from({ length: Math.min(2000, n - i) }, (_, k) =>
        store.appendLog({
          kind: 'release',
          tenant: 'acme',
          actor: `ear:sub=tdx:${(i + k).toString(16)}`,
          subject: 'kbs:///acme/models/llama-key',
          details: { policy: 'default', status: 'affirming', n: i + k },
        }),
      ),
    );
    // A checkpoint now and then, as the broker's timer signs them.
    if (i % 20_000 === 0) await signCheckpointNow(store, logStore, 'bench.example/log', signer);
  }
  await signCheckpointNow(store, logStore, 'bench.example/log', signer);
  const tlog = new translog.TransparencyLog(logStore, 'bench.example/log');
  const options = { inclusion: 'all', consistency: true };
  log('exporting');
  peak = 0;
  let t = performance.now();
  let bytes = 0;
  let text = '';
  if (tlog.exportLines) for await (const c of tlog.exportLines(options)) bytes += Buffer.byteLength(c);
  else {
    // Before streaming: the whole bundle in memory.
    text = translog.formatBundle(await tlog.export(options));
    bytes = Buffer.byteLength(text);
  }
  const exportS = (performance.now() - t) / 1000;
  const exportPeak = peak;
  log('exporting without proofs (baseline)');
  const plainOptions = { consistency: false };
  t = performance.now();
  if (tlog.exportLines) for await (const c of tlog.exportLines(plainOptions)) void c;
  else translog.formatBundle(await tlog.export(plainOptions));
  const plainS = (performance.now() - t) / 1000;
  log('verifying (streamed: export piped into the verifier)');
  peak = 0;
  t = performance.now();
  async function* lines() {
    for await (const c of tlog.exportLines(options)) yield* c.slice(0, -1).split('\n');
  }
  const report = translog.verifyBundleLines
    ? await translog.verifyBundleLines(lines(), vkey)
    : await translog.verifyBundle(text, vkey);
  const verifyS = (performance.now() - t) / 1000;
  if (!report.ok) throw new Error(`the bundle did not verify: ${report.errors[0]?.message}`);
  const out = {
    entries: n,
    exportSeconds: Math.round(exportS * 100) / 100,
    exportEntriesPerSecond: Math.round(n / exportS),
    exportPeakHeapMB: Math.round(exportPeak / 2 ** 20),
    plainExportEntriesPerSecond: Math.round(n / plainS),
    proofs_vs_plain: Math.round((plainS / exportS) * 1000) / 1000,
    bundleMB: Math.round(bytes / 2 ** 20),
    verifyEntriesPerSecond: Math.round(n / verifyS),
    verifySeconds: Math.round(verifyS * 100) / 100,
    verifyPeakHeapMB: Math.round(peak / 2 ** 20),
  };
  log(JSON.stringify(out, null, 2));
  console.log(JSON.stringify(out));
  await store.close();
} finally {
  clearInterval(sample);
  rmSync(dir, { recursive: true, force: true });
}
