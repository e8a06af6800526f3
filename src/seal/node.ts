/**
 * Node edges of the sealed format: files and pipes, temporary-file-then-rename so that no partial
 * output is ever left under the target name, and worker threads for large inputs.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  chmod,
  type FileHandle,
  link,
  lstat,
  open,
  readdir,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { ChunkCipher } from './aead.js';
import { bestChunkCipher } from './aead-native.js';
import {
  beginSeal,
  openBodyStream,
  openSealed,
  openStream,
  type RangeSource,
  rethrowAuth,
  type SealedFile,
  type SealedReader,
  type SealOptions,
  sealStream,
  type UnwrappedSealedFile,
} from './container.js';
import { chunkCount, type Header, SealFormatError } from './format.js';
import type { UnsealKey } from './keys.js';
import { WorkerPoolCipher } from './pool.js';
import type { FileRangeJob } from './worker.js';

/** Inputs at least this large (or of unknown size) are processed on worker threads. */
const PARALLEL_THRESHOLD = 64 * 1024 * 1024;
const READ_BYTES = 4 * 1024 * 1024;

export interface FileOptions {
  /** Overwrite an existing output file. */
  force?: boolean;
  /** Worker threads, a whole number ≥ 0: 0 = this thread only; default: all cores for large inputs. */
  workers?: number;
  /** Called with bytes of input consumed so far. */
  onProgress?: (done: number) => void;
}

/** Temporary files not yet renamed into place; removed on every exit path (see cli/signals.ts). */
export const pendingTemporaries = new Set<string>();

/**
 * Refuses a worker count that is not a whole number ≥ 0 (NaN from a mistyped option, say): a pool of
 * no workers would take the jobs and never answer, and the caller would wait forever.
 */
function checkWorkers(workers: number | undefined): void {
  if (workers !== undefined && !(Number.isSafeInteger(workers) && workers >= 0))
    throw new RangeError(`workers must be a whole number ≥ 0, not ${workers}`);
}

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
  return onProgress ? web.pipeThrough(counting(onProgress, 0)) : web;
}

/** Passes bytes through, calling `onProgress` with the running total (from `start`). */
function counting(onProgress: (n: number) => void, start: number): TransformStream<Uint8Array, Uint8Array> {
  let done = start;
  return new TransformStream<Uint8Array, Uint8Array>({
    transform(b, c) {
      done += b.length;
      onProgress(done);
      c.enqueue(b);
    },
  });
}

/**
 * Readable.toWeb on Node 20 reads ahead without backpressure (unbounded memory on a fast pipe), so the
 * web stream pulls from the Node stream's iterator one piece at a time instead.
 */
export function pullFrom(node: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
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
 * The temporary beside `out`: `.<name>.<pid>-<random>.tmp`. The writer's pid in the name lets a later
 * run tell a dead writer's leftover from a live one's (see removeStaleTemporaries).
 */
function temporaryFor(out: string): string {
  return join(dirname(out), `.${basename(out)}.${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
}

const TEMPORARY_SUFFIX = /^(\d{1,10})-[0-9a-f]{12}\.tmp$/;

/** Whether a process with this pid exists (EPERM: it does, under another user). */
function processExists(pid: number): boolean {
  if (pid <= 0 || pid > 0x7fffffff) return true; // not a pid this naming writes: leave it alone
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Removes temporaries of `out` left by writers that no longer run. SIGKILL, an OOM kill or a power cut
 * end a writer before any cleanup, and its temporary (plaintext, for unseal) would otherwise stay
 * forever. A temporary whose pid is alive is kept even if that pid now belongs to another process:
 * keeping a stale file is safe, removing a live writer's is not. Writers in another pid namespace
 * sharing the directory would look dead; a writer whose temporary vanished fails instead of publishing.
 */
async function removeStaleTemporaries(out: string): Promise<void> {
  const dir = dirname(out);
  const prefix = `.${basename(out)}.`;
  // An unreadable directory is reported by the attempt to create the temporary, just after.
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const m = name.startsWith(prefix) ? TEMPORARY_SUFFIX.exec(name.slice(prefix.length)) : null;
    if (!m || processExists(Number(m[1]))) continue;
    // Only a file this user could have written: not another user's (in a shared directory, as root),
    // not a directory or anything else put there under such a name, which would otherwise stop every
    // write of this output. One that cannot be removed is left: the new temporary has its own name.
    const path = join(dir, name);
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isFile() || st.uid !== process.getuid?.()) continue;
    await unlink(path).catch(() => {});
  }
}

/** `force` false: the caller offers --force; undefined: it has no way to overwrite, so no hint. */
function alreadyExists(out: string, force: boolean | undefined): FileError {
  return new FileError(`${out} already exists${force === false ? ' (use --force to overwrite)' : ''}`);
}

/**
 * Moves the finished temporary to `out`. Without `force` it is linked, which fails if `out` appeared
 * meanwhile instead of replacing it; file systems without hard links fall back to rename (the
 * existence check before the work is then the only guard).
 */
async function publish(tmp: string, out: string, force: boolean | undefined): Promise<void> {
  if (force) return rename(tmp, out);
  try {
    await link(tmp, out);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw alreadyExists(out, force);
    if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS')
      return rename(tmp, out);
    throw e;
  }
  await rm(tmp, { force: true });
}

/**
 * Produces `out` through a 0600 temporary file beside it that is moved into place only once `fill`
 * has succeeded, and removed otherwise: no partial output ever appears under the target name, and an
 * existing file is replaced (with --force) rather than written into, so it never keeps its old mode.
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
    if (exists) throw alreadyExists(out, force);
  }
  await removeStaleTemporaries(out);
  const tmp = temporaryFor(out);
  pendingTemporaries.add(tmp);
  try {
    await (await open(tmp, 'wx', 0o600)).close();
    await fill(tmp);
    await publish(tmp, out, force);
  } catch (e) {
    await rm(tmp, { force: true });
    // A failed write to the temporary (ENOSPC, EIO) names no file, or the temporary: name the output.
    const sys = e as NodeJS.ErrnoException;
    if (sys.syscall && (!sys.path || sys.path === tmp)) sys.path = out;
    throw e;
  } finally {
    pendingTemporaries.delete(tmp);
  }
}

/**
 * Writes a small file (a key) through a temporary, like every other output: a full disk or a crash
 * leaves no empty or partial file that would block the next try, and `mode` holds even when an
 * existing file is replaced with `force`.
 */
export async function writeFileAtomically(
  out: string,
  content: string | Uint8Array,
  opts: { mode: 0o600 | 0o644; force?: boolean | undefined },
): Promise<void> {
  await withTemporary(out, opts.force, async (tmp) => {
    await writeFile(tmp, content);
    if (opts.mode !== 0o600) await chmod(tmp, opts.mode);
  });
}

/**
 * Writes a stream to stdout ('-') or, through a temporary file, to `out`: a stream that fails leaves no
 * file (and an existing one as it was).
 */
export async function writeOutput(
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

/**
 * Worker ranges read exactly the length the input had when sealing began; an input that changed
 * meanwhile is refused as the streaming path refuses it (which reads to the end and counts).
 */
async function checkUnchanged(input: string, size: number): Promise<void> {
  const now = (await stat(input)).size;
  if (now > size)
    throw new SealFormatError(
      'range',
      `input is longer than the declared ${size} bytes (it grew while being sealed)`,
    );
  if (now < size)
    throw new SealFormatError('range', `input ended after ${now} of the declared ${size} bytes`);
}

export async function sealFile(
  input: string,
  out: string,
  opts: Omit<SealOptions, 'cipher' | 'plaintextLength'> & FileOptions,
): Promise<Header> {
  checkWorkers(opts.workers);
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
      await checkUnchanged(input, size);
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
  checkWorkers(opts.workers);
  const size = await inputSize(input);
  if (size === undefined) {
    // A pipe: its header is read as it arrives.
    await withCipher(size, opts.workers, (cipher, inFlight) =>
      writeOutput(
        inputStream(input, opts.onProgress).pipeThrough(openStream(key, cipher, { inFlight })),
        out,
        opts.force,
      ),
    );
    return;
  }
  const sealed = await openSealedPath(input);
  try {
    await (await sealed.unwrap(key)).unsealTo(out, opts);
  } finally {
    await sealed.close();
  }
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

export interface MemoryOptions {
  workers?: number;
  /** Destination backed by a SharedArrayBuffer, exactly the plaintext length (e.g. a model arena). */
  into?: Uint8Array;
}

/** A sealed file on disk, its header parsed once (see `SealedFile`); close() it when done. */
export interface SealedPath extends SealedFile {
  readonly path: string;
  /** As `SealedFile.unwrap`, decrypting with the fastest cipher here. */
  unwrap(key: UnsealKey): Promise<UnwrappedSealedPath>;
  close(): Promise<void>;
}

export interface UnwrappedSealedPath extends UnwrappedSealedFile {
  /** The plaintext to `out` (or stdout, '-'), as `unsealFile`. */
  unsealTo(out: string, opts?: FileOptions): Promise<void>;
  /** The plaintext into memory, as `unsealToMemory`. */
  toMemory(opts?: MemoryOptions): Promise<Uint8Array>;
}

/**
 * Opens a sealed file and parses its header once. Reads on this thread go through the one descriptor
 * opened here; worker threads (large files) open `path` themselves.
 */
export async function openSealedPath(path: string): Promise<SealedPath> {
  const size = await inputSize(path);
  if (size === undefined) throw new FileError(`${path}: needs a regular file, not a pipe`);
  const fh = await open(path, 'r');
  let sealed: SealedFile;
  try {
    sealed = await openSealed(fileSource(fh, size));
  } catch (e) {
    await fh.close();
    if (e instanceof SealFormatError) e.message = `${path}: ${e.message}`;
    throw e;
  }
  return {
    header: sealed.header,
    recipients: sealed.recipients,
    name: sealed.name,
    size,
    path,
    close: () => fh.close(),
    async unwrap(key) {
      const file = await sealed.unwrap(key, bestChunkCipher());
      return {
        ...file,
        unsealTo: (out, opts = {}) => unsealOpened(path, size, file, out, opts),
        toMemory: (opts = {}) => unsealOpenedToMemory(path, size, file, opts),
      };
    },
  };
}

async function unsealOpened(
  input: string,
  size: number,
  file: UnwrappedSealedFile,
  out: string,
  opts: FileOptions,
): Promise<void> {
  checkWorkers(opts.workers);
  const n = rangeWorkers(input, out, size, opts.workers);
  if (n > 0) {
    const { ctx, plaintextLength, count, bodyOffset } = file;
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
  await withCipher(size, opts.workers, (cipher, inFlight) => {
    const body = opts.onProgress
      ? file.body().pipeThrough(counting(opts.onProgress, file.bodyOffset))
      : file.body();
    return writeOutput(
      body.pipeThrough(openBodyStream({ ...file.ctx, cipher }, { inFlight })),
      out,
      opts.force,
    );
  });
}

/** Random access to a sealed file; call close() when done. */
export async function openSealedFile(
  path: string,
  key: UnsealKey,
): Promise<SealedReader & { close(): Promise<void> }> {
  const sealed = await openSealedPath(path);
  try {
    const reader = await (await sealed.unwrap(key)).reader();
    return { ...reader, close: () => sealed.close() };
  } catch (e) {
    await sealed.close();
    throw e;
  }
}

/**
 * Plaintext bytes [start, end) of a sealed file to `out`, or to stdout ('-'), decrypting a batch of
 * chunks at a time: memory stays bounded whatever the range, and a file output goes through a
 * temporary like unsealFile's, so a failure (a tampered chunk, a full disk) leaves nothing behind.
 */
export async function unsealRange(
  input: string,
  out: string,
  key: UnsealKey,
  start: number,
  end: number,
  opts: Pick<FileOptions, 'force'> = {},
): Promise<void> {
  const reader = await openSealedFile(input, key);
  try {
    await writeOutput(reader.stream(start, end), out, opts.force);
  } finally {
    await reader.close();
  }
}

/** Reads and parses just the header (no key needed, no secrets shown). */
export async function readHeader(path: string): Promise<{ header: Header; fileSize: number }> {
  const sealed = await openSealedPath(path);
  await sealed.close();
  return { header: sealed.header, fileSize: sealed.size };
}

/**
 * Unseals a whole file into memory — the path the TEE agent takes, so plaintext never touches disk.
 * Large files are split into contiguous chunk ranges; each worker reads its range itself and decrypts
 * straight into one shared buffer, so the only copy is the read from the page cache.
 */
export async function unsealToMemory(
  path: string,
  key: UnsealKey,
  opts: MemoryOptions = {},
): Promise<Uint8Array> {
  checkWorkers(opts.workers);
  const sealed = await openSealedPath(path);
  try {
    return await (await sealed.unwrap(key)).toMemory(opts);
  } finally {
    await sealed.close();
  }
}

async function unsealOpenedToMemory(
  path: string,
  size: number,
  file: UnwrappedSealedFile,
  opts: MemoryOptions,
): Promise<Uint8Array> {
  checkWorkers(opts.workers);
  const { ctx, plaintextLength, count, bodyOffset } = file;
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

export { bestChunkCipher } from './aead-native.js';
