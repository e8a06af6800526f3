#!/usr/bin/env node
/**
 * TDX quote verification latency with a warm collateral cache (target ≤ 0.5 ms per quote): the real
 * dcap-qvl v4 quote and its collateral, served from memory as a caching CollateralSource would, so
 * each iteration does the full parse → verify → appraise with the collateral and PCK-chain checks
 * answered from Cloister's caches. Run after `npm run build`: node bench/tdx-verify.js. The last
 * line is one JSON object.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const { tdxVerifier } = await import('../dist/attest/tdx/index.js');

const dir = join(import.meta.dirname, '../test/vectors/tdx/dcap-qvl_v4_b0c06f_uptodate');
const quote = new Uint8Array(readFileSync(join(dir, 'quote.bin')));
const bundle = { body: new Uint8Array(readFileSync(join(dir, 'collateral.json'))), headers: {} };
const options = {
  at: new Date('2025-07-01T00:00:00Z'),
  collateral: { get: async (req) => (req.files.includes('collateral.json') ? bundle : undefined) },
};
const n = Number(process.env.BENCH_N ?? 5000);

let t = performance.now();
await tdxVerifier.appraiseEvidence(quote, options);
const coldMs = performance.now() - t;
for (let i = 0; i < 500; i++) await tdxVerifier.appraiseEvidence(quote, options);
t = performance.now();
for (let i = 0; i < n; i++) await tdxVerifier.appraiseEvidence(quote, options);
const warmMs = (performance.now() - t) / n;
process.stderr.write(
  `cold (first) verification: ${coldMs.toFixed(1)} ms; warm: ${warmMs.toFixed(3)} ms per quote over ${n}\n`,
);
console.log(
  JSON.stringify({
    bench: 'tdx-verify',
    quote: 'dcap-qvl_v4_b0c06f_uptodate',
    n,
    cold_ms: coldMs,
    warm_ms: warmMs,
  }),
);
