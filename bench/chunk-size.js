#!/usr/bin/env node
/**
 * The sealed format's chunk size, measured (npm run bench:chunk-size): for each candidate, sealing
 * throughput on one core with the native backend, one call per chunk in place as the file paths do (in
 * memory, so I/O does not hide per-chunk costs), the latency of a random 1 MiB read through the
 * random-access reader, and the size overhead of the tags. The baseline is
 * `openssl speed -evp aes-256-gcm` on 1 MiB buffers. Last line: one JSON object.
 */
import { execFileSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';

const { bestChunkCipher, chunkCipherBackend } = await import('../dist/seal/aead-native.js');
const { sealBytes, openReader, bytesSource } = await import('../dist/seal/container.js');
const { generateKek } = await import('../dist/seal/keys.js');

const MiB = 1024 * 1024;
const total = Number(process.env.BENCH_BYTES ?? 256 * MiB);
const sizes = [16 * 1024, 64 * 1024, 256 * 1024, MiB, 4 * MiB];
const cipher = bestChunkCipher();
const kek = generateKek('kbs:///bench/chunks/kek');
const recipients = [{ type: 'kbs', uri: 'kbs:///bench/chunks/kek', kek: kek.secret }];
const plain = new Uint8Array(total);
for (let i = 0; i < total; i += 65536) crypto.getRandomValues(plain.subarray(i, Math.min(total, i + 65536)));
const log = (s) => process.stderr.write(`${s}\n`);

const out = [];
// Per-chunk cost as the file paths pay it: one cipher call per chunk, in place, no streams.
function perChunk(chunkSize, sealing, buf) {
  const stride = chunkSize + 16;
  const key = crypto.getRandomValues(new Uint8Array(32));
  const noncePrefix = new Uint8Array(7);
  const aad = new Uint8Array(32);
  const n = Math.ceil(total / chunkSize);
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    const len = Math.min(chunkSize, total - i * chunkSize);
    const at = i * stride;
    const final = i === n - 1;
    if (sealing)
      cipher.seal({
        key,
        noncePrefix,
        aad,
        first: i,
        chunkSize,
        final,
        input: buf.subarray(at, at + len),
        output: buf.subarray(at, at + len + 16),
      });
  }
  return (performance.now() - t) / 1000;
}

for (const chunkSize of sizes) {
  const n = Math.ceil(total / chunkSize);
  const buf = new Uint8Array(total + n * 16);
  buf.fill(7);
  perChunk(chunkSize, true, buf);
  const sealS = perChunk(chunkSize, true, buf);
  const sealed = await sealBytes(plain.subarray(0, 64 * MiB), { recipients, chunkSize, cipher });
  const reader = await openReader(bytesSource(sealed), kek, cipher);
  const lat = [];
  for (let i = 0; i < 200; i++) {
    const a = Math.floor(Math.random() * (64 * MiB - MiB));
    const s = performance.now();
    await reader.read(a, a + MiB);
    lat.push(performance.now() - s);
  }
  lat.sort((x, y) => x - y);
  const row = {
    chunk_size: chunkSize,
    seal_gbps: +(total / sealS / 1e9).toFixed(3),
    read_1mib_p50_ms: +lat[100].toFixed(3),
    overhead_pct: +((16 / chunkSize) * 100).toFixed(4),
  };
  log(JSON.stringify(row));
  out.push(row);
}
const speed = execFileSync(
  'openssl',
  ['speed', '-evp', 'aes-256-gcm', '-bytes', '1048576', '-seconds', '2'],
  { stdio: ['ignore', 'pipe', 'ignore'] },
).toString();
const openssl = (Number(/AES-256-GCM\s+([\d.]+)k/.exec(speed)?.[1]) * 1000) / 1e9;
const chosen = out.find((r) => r.chunk_size === MiB);
console.log(
  JSON.stringify({
    backend: chunkCipherBackend(),
    bytes: total,
    openssl_gbps: +openssl.toFixed(3),
    sizes: out,
    chosen: MiB,
    chosen_vs_openssl: +(chosen.seal_gbps / openssl).toFixed(3),
  }),
);
