/**
 * Sealed files in and out of the private directory (Node-only). Inputs are unsealed by streaming
 * straight into a 0600 file in the private directory (never to a disk); a failure part way zeroes and
 * removes what was written. Outputs are sealed into a temporary file beside the target and renamed
 * into place once complete, never through a symbolic link (confined.ts). Both hash the sealed bytes
 * as they pass, so the digest in the receipt is of exactly the bytes that were read or written.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Recipient } from '../seal/index.js';
import { beginSeal, openBodyStream, sealStream } from '../seal/index.js';
import { bestChunkCipher, pullFrom, type SealedPath } from '../seal/node.js';
import type { ConfinedDir } from './confined.js';
import type { KekCache } from './keys.js';

function hashing(hash: ReturnType<typeof createHash>): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream({
    transform(b, c) {
      hash.update(b);
      c.enqueue(b);
    },
  });
}

function fileSink(fh: FileHandle): WritableStream<Uint8Array> {
  return new WritableStream({
    async write(b) {
      for (let o = 0; o < b.length; ) o += (await fh.write(b, o, b.length - o)).bytesWritten;
    },
  });
}

/** Zeroes a file's first `size` bytes in place, then unlinks it. */
async function zeroAndRemove(path: string): Promise<void> {
  try {
    const fh = await open(path, 'r+');
    try {
      const { size } = await fh.stat();
      const zeros = new Uint8Array(Math.min(size, 1 << 20));
      for (let o = 0; o < size; )
        o += (await fh.write(zeros, 0, Math.min(zeros.length, size - o), o)).bytesWritten;
    } finally {
      await fh.close();
    }
  } finally {
    await rm(path, { force: true });
  }
}

/** A file name that is safe in a directory: the last path element, odd characters replaced. */
export function safeFileName(name: string, fallback: string): string {
  const base = (name.split(/[\\/]/).pop() ?? '').replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '');
  return base === '' ? fallback : base.slice(0, 200);
}

/** `model.gguf` → `MODEL_GGUF`, for CLOISTER_INPUT_<NAME>. */
export function envName(name: string): string {
  return name.toUpperCase().replace(/[^A-Z0-9]/g, '_');
}

export interface UnsealedFile {
  path: string;
  name: string;
  kbsUri: string;
  sealedSha256: string;
  size: number;
}

/**
 * Unseals the opened `sealed` (named `label` in errors) into `dir/name` (mode 0600, refusing to
 * overwrite). The KEK comes from the broker by the header's `kbs` recipient; nothing is written before
 * the broker has released it.
 */
export async function unsealInto(
  sealed: SealedPath,
  label: string,
  dir: string,
  name: string,
  keys: KekCache,
): Promise<UnsealedFile> {
  // The caller opened the file once (its header parsed there, for naming and the key request); the
  // data key is unwrapped once here, and all reads go through that one descriptor.
  const kek = await keys.forHeader(sealed.header, label);
  const file = await sealed.unwrap(kek);
  const out = join(dir, name);
  const hash = createHash('sha256').update(sealed.header.raw);
  const fh = await open(out, 'wx', 0o600);
  let size = 0;
  try {
    const count = new TransformStream<Uint8Array, Uint8Array>({
      transform(b, c) {
        size += b.length;
        c.enqueue(b);
      },
    });
    await file
      .body()
      .pipeThrough(hashing(hash))
      .pipeThrough(openBodyStream(file.ctx))
      .pipeThrough(count)
      .pipeTo(fileSink(fh));
  } catch (e) {
    await fh.close();
    await zeroAndRemove(out);
    throw e;
  }
  await fh.close();
  return { path: out, name, kbsUri: kek.uri!, sealedSha256: hash.digest('hex'), size };
}

export interface SealedOutput {
  /** Relative to the output directory. */
  file: string;
  sealedSha256: string;
  recipients: string[];
}

/**
 * Seals the workload's file `rel` (under `src`, the private outputs directory) to `recipients` as
 * `<out>/<rel>.sealed`. Both sides are walked without following links (confined.ts): a link the
 * workload left in its outputs is not read through, and a link planted in the output directory is
 * refused, not written through.
 */
export async function sealInto(
  src: ConfinedDir,
  rel: string,
  out: ConfinedDir,
  recipients: Recipient[],
): Promise<SealedOutput> {
  const file = `${rel}.sealed`;
  const parts = file.split('/');
  const name = parts.pop()!;
  const plain = await src.openFile(rel);
  try {
    const { size } = await plain.stat();
    const dir = (await out.subdir(parts.join('/'), true))!;
    try {
      const ctx = await beginSeal({
        recipients,
        plaintextLength: size,
        name: basename(rel),
        cipher: bestChunkCipher(),
      });
      const hash = createHash('sha256');
      await dir.writeFile(name, 0o644, (fh) =>
        pullFrom(plain.createReadStream({ highWaterMark: 4 << 20, autoClose: false, start: 0 }))
          .pipeThrough(sealStream(ctx))
          .pipeThrough(hashing(hash))
          .pipeTo(fileSink(fh)),
      );
      return {
        file,
        sealedSha256: hash.digest('hex'),
        recipients: ctx.header.recipients.map((r) => r.keyId),
      };
    } finally {
      if (dir !== out) await dir.close();
    }
  } finally {
    await plain.close();
  }
}
