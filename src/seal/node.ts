/**
 * Node edges of the sealed format: files and pipes, temporary-file-then-rename so that no partial
 * output is ever left under the target name, and worker threads for large inputs.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, open, rename, rm, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { ChunkCipher } from './aead.js';
import { bestChunkCipher } from './aead-native.js';
import {
  beginSeal,
  type OpenedBody,
  openBody,
  openReader,
  openStream,
  type RangeSource,
  rethrowAuth,
  type SealedReader,
  type SealOptions,
  sealStream,
} from './container.js';
import { chunkCount, type Header, headerLengthOf, parseHeader, SealFormatError } from './format.js';
import type { UnsealKey } from './keys.js';
import { WorkerPoolCipher } from './pool.js';
import type { FileRangeJob } from './worker.js';

/** Inputs at least this large (or of unknown size) are processed on worker threads. */
const PARALLEL_THRESHOLD = 64 * 1024 * 1024;
const READ_BYTES = 4 * 1024 * 1024;

export interface FileOptions {
  /** Overwrite an existing output file. */
  force?: boolean;
  /** Worker threads: 0 = this thread only; default: all cores for large inputs. */
  workers?: number;
  /** Called with bytes of input consumed so far. */
  onProgress?: (done: number) => void;
}

/** Temporary files not yet renamed into place; removed on every exit path (see cli/signals.ts). */
export const pendingTemporaries = new Set<string>();

async function withCipher<T>(
  size: number | undefined,
  workers: number | undefined,
  fn: (c: ChunkCipher, inFlight: number) => Promise<T>,
): Promise<T> {
  const n = workers ?? (size === undefined || size >= PARALLEL_THRESHOLD ? availableParallelism() : 0);
  if (n <= 0) return fn(bestChunkCipher(), 2);
  const pool = new WorkerPoolCipher(n);
  try {
    return await fn(pool, 2 * n);
  } finally {
    await pool.close();
  }
}

function inputStream(path: string, onProgress?: (n: number) => void): ReadableStream<Uint8Array> {
  const node = path === '-' ? process.stdin : createReadStream(path, { highWaterMark: READ_BYTES });
  const web = pullFrom(node);
  if (!onProgress) return web;
  let done = 0;
  return web.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(b, c) {
        done += b.length;
        onProgress(done);
        c.enqueue(b);
      },
    }),
  );
}

/**
 * Readable.toWeb on Node 20 reads ahead without backpressure (unbounded memory on a fast pipe), so the
 * web stream pulls from the Node stream's iterator one piece at a time instead.
 */
function pullFrom(node: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
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

async function inputSize(path: string): Promise<number | undefined> {
  if (path === '-') return undefined;
  try {
    const s = await stat(path);
    if (s.isDirectory()) throw new SealFormatError('range', `${path} is a directory`);
    return s.isFile() ? s.size : undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new FileError(`${path}: no such file`);
    throw e;
  }
}

/** A problem with a path (missing input, existing output), as opposed to a problem with the content. */
export class FileError extends Error {
  override name = 'FileError';
}

/*
 * Sinks that finish each write before accepting the next: Writable.toWeb on Node 20 acknowledges writes
 * before they complete, so a fast producer fills memory with pending output.
 */
function fileSink(fh: FileHandle): WritableStream<Uint8Array> {
  return new WritableStream({
    async write(b) {
      for (let o = 0; o < b.length; ) o += (await fh.write(b, o, b.length - o)).bytesWritten;
    },
  });
}

function stdoutSink(): WritableStream<Uint8Array> {
  return new WritableStream({
    write: (b) => new Promise<void>((res, rej) => process.stdout.write(b, (e) => (e ? rej(e) : res()))),
  });
}

/**
 * Produces `out` through a 0600 temporary file beside it that is renamed into place only once `fill`
 * has succeeded, and removed otherwise: no partial output ever appears under the target name.
 */
async function withTemporary(
  out: string,
  force: boolean | undefined,
  fill: (tmp: string) => Promise<void>,
): Promise<void> {
  if (!force) {
    const exists = await stat(out).then(
      () => true,
      () => false,
    );
    if (exists) throw new FileError(`${out} already exists (use --force to overwrite)`);
  }
  const tmp = join(dirname(out), `.${basename(out)}.${randomBytes(6).toString('hex')}.tmp`);
  pendingTemporaries.add(tmp);
  try {
    await (await open(tmp, 'wx', 0o600)).close();
    await fill(tmp);
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  } finally {
    pendingTemporaries.delete(tmp);
  }
}

/** Writes a stream to stdout ('-') or, through a temporary file, to `out`. */
async function writeOutput(
  stream: ReadableStream<Uint8Array>,
  out: string,
  force: boolean | undefined,
): Promise<void> {
  if (out === '-') {
    await stream.pipeTo(stdoutSink());
    return;
  }
  await withTemporary(out, force, async (tmp) => {
    const fh = await open(tmp, 'r+');
    try {
      await stream.pipeTo(fileSink(fh));
    } finally {
      await fh.close();
    }
  });
}

/** Whether a file-to-file job runs as worker ranges: both ends files, and large or workers asked for. */
function rangeWorkers(
  input: string,
  out: string,
  size: number | undefined,
  workers: number | undefined,
): number {
  if (input === '-' || out === '-' || size === undefined) return 0;
  if (workers !== undefined) return workers;
  return size >= PARALLEL_THRESHOLD ? availableParallelism() : 0;
}

/** Runs a file job over all chunks on `n` workers in contiguous ranges, reporting progress. */
async function runRanges(
  job: Omit<FileRangeJob, 'first' | 'end' | 'progress'>,
  n: number,
  onProgress?: (done: number) => void,
): Promise<void> {
  const workers = Math.max(1, Math.min(n, job.chunkCount));
  const progress = new BigInt64Array(new SharedArrayBuffer(8));
  const timer = onProgress
    ? setInterval(() => onProgress(Number(Atomics.load(progress, 0))), 100)
    : undefined;
  const pool = new WorkerPoolCipher(workers);
  try {
    const per = Math.ceil(job.chunkCount / workers);
    const ranges: Promise<void>[] = [];
    for (let first = 0; first < job.chunkCount; first += per) {
      ranges.push(pool.fileRange({ ...job, first, end: Math.min(first + per, job.chunkCount), progress }));
    }
    await Promise.all(ranges);
  } catch (e) {
    rethrowAuth(e);
  } finally {
    clearInterval(timer);
    await pool.close();
  }
}

export async function sealFile(
  input: string,
  out: string,
  opts: Omit<SealOptions, 'cipher' | 'plaintextLength'> & FileOptions,
): Promise<Header> {
  const size = await inputSize(input);
  const n = rangeWorkers(input, out, size, opts.workers);
  if (n > 0 && size !== undefined) {
    const ctx = await beginSeal({ ...opts, plaintextLength: size, name: opts.name ?? basename(input) });
    const { header } = ctx;
    await withTemporary(out, opts.force, async (tmp) => {
      const fh = await open(tmp, 'r+');
      try {
        await fh.write(header.raw, 0, header.raw.length, 0);
      } finally {
        await fh.close();
      }
      const keys = {
        key: ctx.payloadKey,
        noncePrefix: header.noncePrefix,
        aad: ctx.aad,
        chunkSize: header.chunkSize,
      };
      const job = {
        kind: 'seal-file' as const,
        input,
        output: tmp,
        headerLength: header.headerLength,
        plaintextLength: size,
        chunkCount: chunkCount(size, header.chunkSize),
        keys,
      };
      await runRanges(job, n, opts.onProgress);
    });
    return header;
  }
  return withCipher(size, opts.workers, async (cipher, inFlight) => {
    const ctx = await beginSeal({
      ...opts,
      cipher,
      plaintextLength: size,
      name: opts.name ?? (input === '-' ? '' : basename(input)),
    });
    await writeOutput(
      inputStream(input, opts.onProgress).pipeThrough(sealStream(ctx, { inFlight })),
      out,
      opts.force,
    );
    return ctx.header;
  });
}

export async function unsealFile(
  input: string,
  out: string,
  key: UnsealKey,
  opts: FileOptions = {},
): Promise<void> {
  const size = await inputSize(input);
  const n = rangeWorkers(input, out, size, opts.workers);
  if (n > 0) {
    const { ctx, plaintextLength, count, bodyOffset } = await openFileBody(input, key);
    const keys = {
      key: ctx.payloadKey,
      noncePrefix: ctx.header.noncePrefix,
      aad: ctx.aad,
      chunkSize: ctx.header.chunkSize,
    };
    await withTemporary(out, opts.force, (tmp) =>
      runRanges(
        {
          kind: 'open-file',
          input,
          output: tmp,
          headerLength: bodyOffset,
          plaintextLength,
          chunkCount: count,
          keys,
        },
        n,
        opts.onProgress,
      ),
    );
    return;
  }
  await withCipher(size, opts.workers, (cipher, inFlight) =>
    writeOutput(
      inputStream(input, opts.onProgress).pipeThrough(openStream(key, cipher, { inFlight })),
      out,
      opts.force,
    ),
  );
}

function fileSource(fh: FileHandle, size: number): RangeSource {
  return {
    size,
    async read(offset, length) {
      const buf = new Uint8Array(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      if (bytesRead !== length)
        throw new SealFormatError('truncated', 'sealed file changed while being read');
      return buf;
    },
  };
}

/**
 * `sha256:<hex>` of a file (a sealed model's digest), hashed on a worker thread: a GiB takes most of a
 * second of one core, which would otherwise hold up everything else on this thread meanwhile.
 */
export async function sha256FileOffThread(path: string): Promise<string> {
  const pool = new WorkerPoolCipher(1);
  try {
    return `sha256:${Buffer.from(await pool.digestFile(path)).toString('hex')}`;
  } finally {
    await pool.close();
  }
}

/** Random access to a sealed file; call close() when done. */
export async function openSealedFile(
  path: string,
  key: UnsealKey,
): Promise<SealedReader & { close(): Promise<void> }> {
  const size = await inputSize(path);
  if (size === undefined) throw new FileError(`${path}: random access needs a regular file, not a pipe`);
  const fh = await open(path, 'r');
  try {
    const reader = await openReader(fileSource(fh, size), key, bestChunkCipher());
    return { ...reader, close: () => fh.close() };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** Reads and parses just the header (no key needed, no secrets shown). */
export async function readHeader(path: string): Promise<{ header: Header; fileSize: number }> {
  const size = await inputSize(path);
  if (size === undefined) throw new FileError(`${path}: inspect needs a regular file`);
  const fh = await open(path, 'r');
  try {
    const src = fileSource(fh, size);
    if (size < 16)
      throw new SealFormatError(
        size === 0 ? 'not-sealed' : 'truncated',
        `${path} is not a sealed file (too short)`,
      );
    const hl = headerLengthOf(await src.read(0, 16));
    if (size < hl) throw new SealFormatError('truncated', `${path}: sealed header is truncated`);
    return { header: parseHeader(await src.read(0, hl)), fileSize: size };
  } finally {
    await fh.close();
  }
}

/**
 * Unseals a whole file into memory — the path the TEE agent takes, so plaintext never touches disk.
 * Large files are split into contiguous chunk ranges; each worker reads its range itself and decrypts
 * straight into one shared buffer, so the only copy is the read from the page cache.
 */
export async function unsealToMemory(
  path: string,
  key: UnsealKey,
  opts: {
    workers?: number;
    /** Destination backed by a SharedArrayBuffer, exactly the plaintext length (e.g. a model arena). */
    into?: Uint8Array;
  } = {},
): Promise<Uint8Array> {
  const size = await inputSize(path);
  if (size === undefined) throw new FileError(`${path}: unsealing to memory needs a regular file`);
  const { ctx, plaintextLength, count, bodyOffset } = await openFileBody(path, key);
  const n = opts.workers ?? (size >= PARALLEL_THRESHOLD ? availableParallelism() : 1);
  if (
    opts.into &&
    (!(opts.into.buffer instanceof SharedArrayBuffer) || opts.into.length !== plaintextLength)
  ) {
    throw new FileError(
      `unsealToMemory: "into" must be a SharedArrayBuffer view of exactly ${plaintextLength} bytes`,
    );
  }
  const memory = opts.into ?? new Uint8Array(new SharedArrayBuffer(plaintextLength));
  const keys = {
    key: ctx.payloadKey,
    noncePrefix: ctx.header.noncePrefix,
    aad: ctx.aad,
    chunkSize: ctx.header.chunkSize,
  };
  try {
    await runRanges(
      {
        kind: 'open-memory',
        input: path,
        memory,
        headerLength: bodyOffset,
        plaintextLength,
        chunkCount: count,
        keys,
      },
      n,
    );
  } catch (e) {
    memory.fill(0);
    throw e;
  }
  return memory;
}

/** Reads and authenticates a sealed file's header and checks its size (see `openBody`). */
async function openFileBody(path: string, key: UnsealKey): Promise<OpenedBody> {
  const size = await inputSize(path);
  if (size === undefined) throw new FileError(`${path}: needs a regular file`);
  const fh = await open(path, 'r');
  try {
    return await openBody(fileSource(fh, size), key, bestChunkCipher());
  } finally {
    await fh.close();
  }
}
