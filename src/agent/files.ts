/**
 * Sealed files in and out of the private directory (Node-only). Inputs are unsealed by streaming
 * straight into a 0600 file in the private directory (never to a disk); a failure part way zeroes and
 * removes what was written. Outputs are sealed into a temporary file beside the target and renamed
 * into place once complete. Both hash the sealed bytes as they pass, so the digest in the receipt is of
 * exactly the bytes that were read or written.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, relative, sep } from 'node:path';
import { bestChunkCipher } from '../seal/aead-native.js';
import { beginSeal, openStream, sealStream } from '../seal/container.js';
import type { Recipient } from '../seal/keys.js';
import { readHeader } from '../seal/node.js';
import { AgentError, type KekCache } from './kbs.js';

export function pullFrom(node: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  // Readable.toWeb on Node 20 reads ahead without backpressure; pull one piece at a time instead.
  const it = node[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        const { done, value } = await it.next();
        if (done) c.close();
        else c.enqueue(value);
      },
      async cancel() {
        await it.return?.();
      },
    },
    { highWaterMark: 0 },
  );
}

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
 * Unseals `sealedPath` into `dir/name` (mode 0600, refusing to overwrite). The KEK comes from the
 * broker by the header's `kbs` recipient; nothing is written before the broker has released it.
 */
export async function unsealInto(
  sealedPath: string,
  dir: string,
  name: string,
  keys: KekCache,
): Promise<UnsealedFile> {
  const { header } = await readHeader(sealedPath);
  const kek = await keys.forHeader(header, sealedPath);
  const out = join(dir, name);
  const hash = createHash('sha256');
  const fh = await open(out, 'wx', 0o600);
  let size = 0;
  try {
    const count = new TransformStream<Uint8Array, Uint8Array>({
      transform(b, c) {
        size += b.length;
        c.enqueue(b);
      },
    });
    await pullFrom(createReadStream(sealedPath, { highWaterMark: 4 << 20 }))
      .pipeThrough(hashing(hash))
      .pipeThrough(openStream(kek, bestChunkCipher()))
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

/** Every regular file under `dir`, as paths relative to it; symbolic links and the like are reported. */
export async function listFiles(dir: string, skipped: (rel: string, why: string) => void): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const rel = relative(dir, p);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out.push(rel);
      else skipped(rel, e.isSymbolicLink() ? 'a symbolic link' : 'not a regular file');
    }
  };
  await walk(dir);
  return out.sort();
}

export interface SealedOutput {
  /** Relative to the output directory. */
  file: string;
  sealedSha256: string;
  recipients: string[];
}

/** Seals `plainPath` to `recipients` as `outDir/<rel>.sealed` (temporary file, then rename). */
export async function sealInto(
  plainPath: string,
  outDir: string,
  rel: string,
  recipients: Recipient[],
): Promise<SealedOutput> {
  const st = await lstat(plainPath);
  if (!st.isFile()) throw new AgentError('output-not-file', `${plainPath} is not a regular file`);
  const file = `${rel}.sealed`;
  const target = join(outDir, file);
  if (!target.startsWith(outDir + sep))
    throw new AgentError('bad-output-name', `output name ${rel} leaves the output directory`);
  await mkdir(dirname(target), { recursive: true });
  const ctx = await beginSeal({
    recipients,
    plaintextLength: st.size,
    name: basename(rel),
    cipher: bestChunkCipher(),
  });
  const hash = createHash('sha256');
  const tmp = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await pullFrom(createReadStream(plainPath, { highWaterMark: 4 << 20 }))
      .pipeThrough(sealStream(ctx))
      .pipeThrough(hashing(hash))
      .pipeTo(fileSink(fh));
    await fh.close();
    await rename(tmp, target);
  } catch (e) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw e;
  }
  return {
    file: file.split(sep).join('/'),
    sealedSha256: hash.digest('hex'),
    recipients: ctx.header.recipients.map((r) => r.keyId),
  };
}
