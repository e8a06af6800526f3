#!/usr/bin/env node
/**
 * Transparency-log costs (npm run build first; BENCH_ENTRIES sets the log size, default 1e5): appends per
 * second (entry JCS + leaf hash + O(log n) node hashes), with a signed checkpoint per append, proof
 * generation and verification per second (from stored subtree hashes, and from leaf hashes only), and
 * offline bundle verification throughput. The last line is one JSON object.
 */
import { performance } from 'node:perf_hooks';

const {
  MemoryLogStore,
  TransparencyLog,
  formatBundle,
  generateNoteSigner,
  verifyBundle,
  verifyConsistency,
  verifyInclusion,
} = await import('../dist/translog/index.js');

const n = Number(process.env.BENCH_ENTRIES ?? 1e5);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const round = (x) => Math.round(x * 10) / 10;

function fields(i) {
  return {
    time: '2026-11-25T12:00:00.000Z',
    kind: i % 2 ? 'release' : 'denial',
    tenant: 'acme',
    actor: `tee:tdx:${i.toString(16)}`,
    subject: `kbs:///acme/models/key-${i % 100}`,
    details: { policy: 'default', status: 'affirming', n: i },
  };
}

async function rate(count, fn) {
  const t = performance.now();
  for (let i = 0; i < count; i++) await fn(i);
  return count / ((performance.now() - t) / 1000);
}

const { signer, vkey } = await generateNoteSigner('bench.example/log');
const store = new MemoryLogStore();
log(`appending ${n} entries one at a time`);
const appendsPerS = await rate(n - 1, (i) => store.append([fields(i)]));
await store.append([fields(n - 1)], { signer });
const signedStore = new MemoryLogStore();
const signedAppendsPerS = await rate(2000, (i) => signedStore.append([fields(i)], { signer }));

const size = await store.size();
const leaves = await store.getLeafHashes(0, size);
const root = await new TransparencyLog(store, signer.name).root(size);
const pick = (i) => (i * 7919 + 13) % size;

const stored = new TransparencyLog(store, signer.name);
const inclGenPerS = await rate(5000, (i) => stored.inclusionProof(pick(i), size));
const proofs = await Promise.all(
  Array.from({ length: 5000 }, (_, i) => stored.inclusionProof(pick(i), size)),
);
const inclVerifyPerS = await rate(5000, (i) =>
  verifyInclusion(pick(i), size, leaves[pick(i)], proofs[i], root),
);
const consGenPerS = await rate(5000, (i) => stored.consistencyProof(1 + pick(i), size));
const cproofs = await Promise.all(
  Array.from({ length: 1000 }, (_, i) => stored.consistencyProof(1 + pick(i), size)),
);
const roots = await Promise.all(Array.from({ length: 1000 }, (_, i) => stored.root(1 + pick(i))));
const consVerifyPerS = await rate(1000, (i) =>
  verifyConsistency(1 + pick(i), size, roots[i], root, cproofs[i]),
);

// Leaf hashes only: a store that keeps no subtree hashes; the first proof warms the in-memory cache.
const leafOnly = {
  size: () => store.size(),
  getLeafHashes: (a, b) => store.getLeafHashes(a, b),
};
const bare = new TransparencyLog(leafOnly, signer.name);
let t = performance.now();
await bare.inclusionProof(0, size);
const coldFirstProofMs = performance.now() - t;
const inclGenLeavesOnlyPerS = await rate(2000, (i) => bare.inclusionProof(pick(i), size));

log('exporting and verifying the whole log');
const text = formatBundle(await stored.export({ consistency: true }));
t = performance.now();
const report = await verifyBundle(text, vkey);
const verifyS = (performance.now() - t) / 1000;
if (!report.ok) throw new Error(`bundle did not verify: ${report.errors[0]?.message}`);

const result = {
  bench: 'translog',
  entries: size,
  appends_per_s: round(appendsPerS),
  signed_appends_per_s: round(signedAppendsPerS),
  inclusion_proofs_per_s: round(inclGenPerS),
  inclusion_verifications_per_s: round(inclVerifyPerS),
  consistency_proofs_per_s: round(consGenPerS),
  consistency_verifications_per_s: round(consVerifyPerS),
  inclusion_proofs_leaf_hashes_only_per_s: round(inclGenLeavesOnlyPerS),
  cold_first_proof_leaf_hashes_only_ms: round(coldFirstProofMs),
  bundle_bytes: text.length,
  bundle_verify_entries_per_s: round(size / verifyS),
};
console.log(JSON.stringify(result));
