#!/usr/bin/env node
/**
 * Chunk-cipher throughput on one core (npm run bench:aead): each backend seals and opens batches of
 * 1, 4 and 16 MiB made of CHUNK-byte chunks (default 1 MiB, the format's default), best of a few
 * trials because the machine is shared. `openssl speed -evp aes-256-gcm -bytes 1048576` is measured in
 * the same run as the per-core ceiling. Progress goes to stderr; the last line on stdout is one JSON
 * object with the unseal (open) figures for 4 MiB batches (the container's batch size), the direction
 * the requirement is about.
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';

const { webCryptoCipher, TAG_BYTES } = await import('../dist/seal/aead.js');
const { nodeCipher } = await import('../dist/seal/aead-node.js');
const { nativeCipher, chunkCipherBackend } = await import('../dist/seal/aead-native.js');

const MiB = 1024 * 1024;
const chunkSize = Number(process.env.CHUNK ?? MiB);
const trialSeconds = Number(process.env.TRIAL_SECONDS ?? 0.5);
const trials = Number(process.env.TRIALS ?? 4);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

/** GB/s of one trial lasting at least `trialSeconds`. */
async function trial(bytes, fn) {
  let n = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    await fn();
    n++;
    elapsed = (performance.now() - start) / 1000;
  } while (elapsed < trialSeconds);
  return (n * bytes) / elapsed / 1e9;
}

function opensslSpeed(decrypt) {
  const args = ['speed', ...(decrypt ? ['-decrypt'] : []), '-evp', 'aes-256-gcm', '-bytes', '1048576'];
  const r = spawnSync('openssl', [...args, '-seconds', '2'], { encoding: 'utf8' });
  // The result line is "AES-256-GCM  5647847.28k", in thousands of bytes per second.
  const m = /AES-256-GCM\s+([\d.]+)k\s*$/m.exec(r.stdout ?? '');
  return m ? (Number(m[1]) * 1000) / 1e9 : null;
}

const key = randomFillSync(new Uint8Array(32));
const noncePrefix = randomFillSync(new Uint8Array(7));
const aad = randomFillSync(new Uint8Array(32));
const backends = [nativeCipher, nodeCipher, webCryptoCipher].filter(Boolean);
const sizes = [MiB, 4 * MiB, 16 * MiB];
const best = {}; // best[name][size] = { seal, open }

log(
  `bestChunkCipher: ${chunkCipherBackend()}; chunk ${chunkSize} bytes; best of ${trials} × ${trialSeconds}s`,
);
let openssl = opensslSpeed(false);
const cases = sizes.map((size) => {
  const plain = randomFillSync(new Uint8Array(size));
  const sealed = new Uint8Array(size + Math.max(1, Math.ceil(size / chunkSize)) * TAG_BYTES);
  return { size, plain, sealed, opened: new Uint8Array(size) };
});
// Rounds interleave every backend and size, so a burst of load from another process on the shared
// machine costs one sample of each rather than every sample of one.
for (let round = 0; round < trials; round++) {
  for (const { size, plain, sealed, opened } of cases) {
    const batch = { key, noncePrefix, aad, first: 0, chunkSize, final: true };
    for (const c of backends) {
      // Both directions write into preallocated buffers, as the container does.
      const sealRate = await trial(size, () => c.seal({ ...batch, input: plain, output: sealed }));
      const openRate = await trial(size, () => c.open({ ...batch, input: sealed, output: opened }));
      best[c.name] ??= {};
      const prev = best[c.name][size] ?? { seal: 0, open: 0 };
      best[c.name][size] = { seal: Math.max(prev.seal, sealRate), open: Math.max(prev.open, openRate) };
    }
  }
}
openssl = Math.max(openssl ?? 0, opensslSpeed(true) ?? 0) || null;
for (const size of sizes) {
  for (const c of backends) {
    const { seal, open } = best[c.name][size];
    log(
      `${c.name.padEnd(9)} ${String(size / MiB).padStart(2)} MiB  seal ${seal.toFixed(2)} GB/s  open ${open.toFixed(2)} GB/s`,
    );
  }
}
log(
  `openssl speed -evp aes-256-gcm -bytes 1048576: ${openssl === null ? 'unavailable' : `${openssl.toFixed(2)} GB/s`}`,
);

// The headline is the 4 MiB batch, the batch size the container hands to a cipher.
const headline = (name) => best[name]?.[4 * MiB].open ?? null;
const native = headline('native');
console.log(
  JSON.stringify({
    native_gbps: round(native),
    node_gbps: round(headline('node')),
    webcrypto_gbps: round(headline('webcrypto')),
    openssl_gbps: round(openssl),
    native_vs_openssl: native !== null && openssl ? round(native / openssl) : null,
  }),
);
