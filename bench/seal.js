#!/usr/bin/env node
/**
 * Sealed-format throughput (npm run bench:seal). BENCH_BYTES sets the file size (default 2 GiB);
 * files live in /dev/shm so the disk is not what is measured. Baselines measured in the same run:
 * `openssl speed` (the cipher's limit per core), `dd` (the I/O floor of a file-to-file transform)
 * and `age` (what a user would otherwise reach for). The last line is one JSON object.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const { sealFile, unsealFile, unsealToMemory, openSealedFile } = await import('../dist/seal/node.js');
const { generateKek } = await import('../dist/seal/keys.js');
const { chunkCipherBackend } = await import('../dist/seal/aead-native.js');

const bytes = Number(process.env.BENCH_BYTES ?? 2 * 1024 ** 3);
const dir = mkdtempSync(join(process.env.BENCH_DIR ?? '/dev/shm', 'cloister-bench-'));
const workers = availableParallelism();
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const gbps = (n, s) => n / s / 1e9;
const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

function time(fn) {
  const t = performance.now();
  const r = fn();
  return r instanceof Promise ? r.then(() => (performance.now() - t) / 1000) : (performance.now() - t) / 1000;
}

async function best(n, fn) {
  let b = Number.POSITIVE_INFINITY;
  for (let i = 0; i < n; i++) b = Math.min(b, await time(fn));
  return b;
}

try {
  const plain = join(dir, 'plain.bin');
  log(`writing ${bytes} random bytes to ${plain}`);
  const fd = openSync(plain, 'w');
  const block = Buffer.alloc(16 * 1024 * 1024);
  for (let done = 0; done < bytes; done += block.length) {
    randomFillSync(block);
    writeSync(fd, block, 0, Math.min(block.length, bytes - done));
  }
  closeSync(fd);

  const opensslOut = execFileSync(
    'openssl',
    ['speed', '-evp', 'aes-256-gcm', '-bytes', '1048576', '-seconds', '3'],
    {
      stdio: ['ignore', 'pipe', 'ignore'],
    },
  ).toString();
  const kps = Number(/AES-256-GCM\s+([\d.]+)k/.exec(opensslOut)?.[1]);
  const opensslGbps = (kps * 1000) / 1e9;
  log(`openssl speed aes-256-gcm 1 MiB: ${opensslGbps.toFixed(2)} GB/s per core`);

  const kek = generateKek('kbs:///bench/models/kek');
  const recipients = [{ type: 'kbs', uri: 'kbs:///bench/models/kek', kek: kek.secret }];
  const sealed = join(dir, 'plain.sealed');
  const out = join(dir, 'out.bin');

  const sealS = await best(3, () => sealFile(plain, sealed, { recipients, force: true }));
  log(`seal file→file: ${gbps(bytes, sealS).toFixed(2)} GB/s (${chunkCipherBackend()}, ${workers} workers)`);
  const unsealS = await best(3, () => unsealFile(sealed, out, kek, { force: true }));
  log(`unseal file→file: ${gbps(bytes, unsealS).toFixed(2)} GB/s`);
  rmSync(out);
  const memS = await best(3, async () => {
    await unsealToMemory(sealed, kek, { workers });
  });
  log(`unseal file→memory: ${gbps(bytes, memS).toFixed(2)} GB/s`);
  // What a fresh buffer costs on its own (page faults, zeroing), and unsealing into one already mapped.
  const fillS = await best(3, () => {
    new Uint8Array(new SharedArrayBuffer(bytes)).fill(1);
  });
  log(
    `allocate and touch ${bytes} bytes: ${gbps(bytes, fillS).toFixed(2)} GB/s (the floor of any unseal into fresh memory)`,
  );
  const arena = new Uint8Array(new SharedArrayBuffer(bytes));
  arena.fill(0);
  const intoS = await best(3, async () => {
    await unsealToMemory(sealed, kek, { workers, into: arena });
  });
  log(`unseal file→mapped memory: ${gbps(bytes, intoS).toFixed(2)} GB/s`);

  const copyS = await best(3, () => {
    execFileSync('dd', [`if=${plain}`, `of=${out}`, 'bs=4M'], { stdio: 'ignore' });
  });
  log(`dd bs=4M copy: ${gbps(bytes, copyS).toFixed(2)} GB/s`);
  rmSync(out);

  let ageEnc = null;
  let ageDec = null;
  if (spawnSync('age', ['--version']).status === 0) {
    const id = join(dir, 'age.key');
    execFileSync('age-keygen', ['-o', id], { stdio: 'ignore' });
    const recipient = execFileSync('age-keygen', ['-y', id]).toString().trim();
    const encS = await best(2, () => {
      execFileSync('age', ['-r', recipient, '-o', join(dir, 'plain.age'), plain]);
    });
    const decS = await best(2, () => {
      execFileSync('age', ['-d', '-i', id, '-o', out, join(dir, 'plain.age')]);
    });
    ageEnc = gbps(bytes, encS);
    ageDec = gbps(bytes, decS);
    log(`age encrypt ${ageEnc.toFixed(2)} GB/s, decrypt ${ageDec.toFixed(2)} GB/s`);
    rmSync(out);
  } else {
    log('age not installed (apt-get install age): its figures are null');
  }

  const reader = await openSealedFile(sealed, kek);
  const lat = [];
  const MiB = 1024 * 1024;
  for (let i = 0; i < 200; i++) {
    const a = Math.floor(Math.random() * (bytes - MiB));
    const t = performance.now();
    await reader.read(a, a + MiB);
    lat.push(performance.now() - t);
  }
  await reader.close();
  lat.sort((x, y) => x - y);
  const p50 = lat[Math.floor(lat.length / 2)];
  log(`random 1 MiB read p50: ${p50.toFixed(2)} ms`);

  const result = {
    bytes,
    workers,
    cipher: chunkCipherBackend(),
    unseal_mem_gbps: round(gbps(bytes, memS)),
    openssl_gbps_per_core: round(opensslGbps),
    seal_gbps: round(gbps(bytes, sealS)),
    unseal_gbps: round(gbps(bytes, unsealS)),
    copy_gbps: round(gbps(bytes, copyS)),
    age_encrypt_gbps: round(ageEnc),
    age_decrypt_gbps: round(ageDec),
    random_read_1mib_p50_ms: round(p50),
    unseal_mem_vs_openssl: round(gbps(bytes, memS) / (opensslGbps * workers)),
    alloc_touch_gbps: round(gbps(bytes, fillS)),
    unseal_mem_mapped_gbps: round(gbps(bytes, intoS)),
    unseal_mem_mapped_vs_openssl: round(gbps(bytes, intoS) / (opensslGbps * workers)),
    seal_vs_copy: round(copyS / sealS),
    unseal_vs_copy: round(copyS / unsealS),
    seal_vs_age: ageEnc === null ? null : round(gbps(bytes, sealS) / ageEnc),
    unseal_vs_age: ageDec === null ? null : round(gbps(bytes, unsealS) / ageDec),
  };
  console.log(JSON.stringify(result));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
