#!/usr/bin/env node
/**
 * Chunk-cipher throughput on one core (npm run bench:aead): each backend seals and opens batches of
 * 1, 4 and 16 MiB made of CHUNK-byte chunks (default 1 MiB, the format's default), best of a few
 * trials because the machine is shared. `openssl speed -evp aes-256-gcm -bytes 1048576` is measured in
 * the same run as the per-core ceiling. Progress goes to stderr; the last line on stdout is one JSON
 * object with the 16 MiB unseal (open) figures, the direction the requirement is about.
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
const trials = Number(process.env.TRIALS ?? 3);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

/** Best GB/s over `trials` runs of at least `trialSeconds` each. */
async function rate(bytes, fn) {
  await fn();
  let best = 0;
  for (let t = 0; t < trials; t++) {
    let n = 0;
    const start = performance.now();
    let elapsed = 0;
    do {
      await fn();
      n++;
      elapsed = (performance.now() - start) / 1000;
    } while (elapsed < trialSeconds);
    best = Math.max(best, (n * bytes) / elapsed / 1e9);
  }
  return best;
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
const results = {};

log(
  `bestChunkCipher: ${chunkCipherBackend()}; chunk ${chunkSize} bytes; best of ${trials} × ${trialSeconds}s`,
);
for (const size of [MiB, 4 * MiB, 16 * MiB]) {
  const plain = randomFillSync(new Uint8Array(size));
  const count = Math.max(1, Math.ceil(size / chunkSize));
  const sealed = new Uint8Array(size + count * TAG_BYTES);
  const opened = new Uint8Array(size);
  const batch = { key, noncePrefix, aad, first: 0, chunkSize, final: true };
  for (const c of backends) {
    // Both directions write into preallocated buffers, as the container does.
    const seal = await rate(size, () => c.seal({ ...batch, input: plain, output: sealed }));
    const open = await rate(size, () => c.open({ ...batch, input: sealed, output: opened }));
    log(
      `${c.name.padEnd(9)} ${String(size / MiB).padStart(2)} MiB  seal ${seal.toFixed(2)} GB/s  open ${open.toFixed(2)} GB/s`,
    );
    results[c.name] = { seal, open };
  }
}
const openssl = Math.max(opensslSpeed(false) ?? 0, opensslSpeed(true) ?? 0) || null;
log(
  `openssl speed -evp aes-256-gcm -bytes 1048576: ${openssl === null ? 'unavailable' : `${openssl.toFixed(2)} GB/s`}`,
);

const native = results.native?.open ?? null;
console.log(
  JSON.stringify({
    native_gbps: round(native),
    node_gbps: round(results.node.open),
    webcrypto_gbps: round(results.webcrypto.open),
    openssl_gbps: round(openssl),
    native_vs_openssl: native !== null && openssl ? round(native / openssl) : null,
  }),
);
