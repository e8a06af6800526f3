/**
 * Worker thread for WorkerPoolCipher. Besides batches handed over by the streams, it hashes whole
 * files and runs whole file ranges itself — positional reads and writes straight from and to the files (or a shared output
 * buffer), encrypting each chunk in place — so that large files cost one copy in and one copy out,
 * with no transfers between threads.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { ChunkAuthError, type ChunkBatch, TAG_BYTES } from './aead.js';
import { bestChunkCipher } from './aead-native.js';

/** Chunks [first, end) of one file; `keys` are what every chunk of that file shares. */
export interface FileRangeJob {
  kind: 'seal-file' | 'open-file' | 'open-memory';
  input: string;
  /** Output file for seal-file and open-file (already created; written at computed offsets). */
  output?: string;
  /** Output buffer (shared memory, the whole plaintext) for open-memory. */
  memory?: Uint8Array;
  headerLength: number;
  plaintextLength: number;
  first: number;
  end: number;
  chunkCount: number;
  keys: Omit<ChunkBatch, 'input' | 'output' | 'first' | 'final'>;
  /** Bytes done so far, added atomically for progress reports (shared memory, one element). */
  progress?: BigInt64Array;
}

export type WorkRequest =
  | { id: number; op: 'seal' | 'open'; batch: ChunkBatch }
  | { id: number; op: 'file'; job: FileRangeJob }
  | { id: number; op: 'sha256'; path: string };

export type WorkReply =
  | { id: number; out: Uint8Array }
  | { id: number; authIndex: number }
  | { id: number; error: string };

const cipher = bestChunkCipher();
const BATCH_BYTES = 4 * 1024 * 1024;

function readFully(fd: number, buf: Uint8Array, pos: number): void {
  for (let done = 0; done < buf.length; ) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw new Error('file is shorter than its header says (it changed while being read)');
    done += n;
  }
}

function writeFully(fd: number, buf: Uint8Array, pos: number): void {
  for (let done = 0; done < buf.length; ) done += writeSync(fd, buf, done, buf.length - done, pos + done);
}

async function runFileRange(job: FileRangeJob): Promise<void> {
  const cs = job.keys.chunkSize;
  const stride = cs + TAG_BYTES;
  const plainLen = (i: number) => Math.min(cs, job.plaintextLength - i * cs);
  const inFd = openSync(job.input, 'r');
  const outFd = job.output ? openSync(job.output, 'r+') : undefined;
  try {
    if (job.kind === 'open-memory') {
      const out = job.memory!;
      const scratch = new Uint8Array(stride);
      for (let i = job.first; i < job.end; i++) {
        const len = plainLen(i);
        const final = i === job.chunkCount - 1;
        // In place: the chunk lands where its plaintext belongs and its tag spills into the next
        // chunk's space, which this worker fills next. The range's last chunk would spill into
        // another worker's space (or past the buffer), and so would one followed by a final chunk
        // shorter than a tag: those go through a scratch buffer.
        const inPlace = i < job.end - 1 && plainLen(i + 1) >= TAG_BYTES;
        const sealed = inPlace
          ? out.subarray(i * cs, i * cs + len + TAG_BYTES)
          : scratch.subarray(0, len + TAG_BYTES);
        readFully(inFd, sealed, job.headerLength + i * stride);
        await cipher.open({
          ...job.keys,
          first: i,
          final,
          input: sealed,
          output: out.subarray(i * cs, i * cs + len),
        });
        if (job.progress) Atomics.add(job.progress, 0, BigInt(len));
      }
      return;
    }
    const per = Math.max(1, Math.floor(BATCH_BYTES / cs));
    const buf = new Uint8Array(per * stride);
    for (let b = job.first; b < job.end; b += per) {
      const n = Math.min(per, job.end - b);
      let bytes = 0;
      let sealedBytes = 0;
      for (let i = b; i < b + n; i++) {
        const len = plainLen(i);
        const at = (i - b) * stride;
        const final = i === job.chunkCount - 1;
        if (job.kind === 'seal-file') {
          const plain = buf.subarray(at, at + len);
          readFully(inFd, plain, i * cs);
          await cipher.seal({
            ...job.keys,
            first: i,
            final,
            input: plain,
            output: buf.subarray(at, at + len + TAG_BYTES),
          });
        } else {
          const sealed = buf.subarray(at, at + len + TAG_BYTES);
          readFully(inFd, sealed, job.headerLength + i * stride);
          await cipher.open({ ...job.keys, first: i, final, input: sealed, output: sealed.subarray(0, len) });
          writeFully(outFd!, sealed.subarray(0, len), i * cs);
        }
        bytes += len;
        sealedBytes += len + TAG_BYTES;
      }
      if (job.kind === 'seal-file')
        writeFully(outFd!, buf.subarray(0, sealedBytes), job.headerLength + b * stride);
      if (job.progress) Atomics.add(job.progress, 0, BigInt(bytes));
    }
  } finally {
    closeSync(inFd);
    if (outFd !== undefined) closeSync(outFd);
  }
}

/** SHA-256 of a whole file, read here so that hashing a large model leaves the main thread free. */
function sha256File(path: string): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const hash = createHash('sha256');
    const buf = new Uint8Array(BATCH_BYTES);
    for (let pos = 0; ; ) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      pos += n;
    }
    return new Uint8Array(hash.digest());
  } finally {
    closeSync(fd);
  }
}

parentPort!.on('message', async (req: WorkRequest) => {
  try {
    if (req.op === 'sha256') {
      const out = sha256File(req.path);
      parentPort!.postMessage({ id: req.id, out } satisfies WorkReply, [out.buffer as ArrayBuffer]);
      return;
    }
    if (req.op === 'file') {
      await runFileRange(req.job);
      parentPort!.postMessage({ id: req.id, out: new Uint8Array(0) } satisfies WorkReply);
      return;
    }
    const out = await (req.op === 'seal' ? cipher.seal(req.batch) : cipher.open(req.batch));
    parentPort!.postMessage({ id: req.id, out } satisfies WorkReply, [out.buffer as ArrayBuffer]);
  } catch (e) {
    const reply: WorkReply =
      e instanceof ChunkAuthError
        ? { id: req.id, authIndex: e.index }
        : { id: req.id, error: String((e as Error).message) };
    parentPort!.postMessage(reply);
  }
});
