/** Worker thread for WorkerPoolCipher: runs one job at a time with the fastest local backend. */
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { ChunkAuthError, type ChunkBatch, TAG_BYTES } from './aead.js';
import { bestChunkCipher } from './aead-native.js';

/** Decrypt chunks [first, end) of a sealed file straight into shared memory (the unseal-to-memory path). */
export interface FileRangeJob {
  path: string;
  bodyOffset: number;
  first: number;
  end: number;
  chunkCount: number;
  batch: Omit<ChunkBatch, 'input' | 'output' | 'first' | 'final'>;
  output: Uint8Array;
}

export type WorkRequest =
  | { id: number; op: 'seal' | 'open'; batch: ChunkBatch }
  | { id: number; op: 'open-file'; job: FileRangeJob };

export type WorkReply =
  | { id: number; out: Uint8Array }
  | { id: number; authIndex: number }
  | { id: number; error: string };

const cipher = bestChunkCipher();
const BATCH_CHUNKS_BYTES = 4 * 1024 * 1024;

async function openFileRange(job: FileRangeJob): Promise<Uint8Array> {
  const { chunkSize } = job.batch;
  const stride = chunkSize + TAG_BYTES;
  const per = Math.max(1, Math.floor(BATCH_CHUNKS_BYTES / chunkSize));
  const scratch = new Uint8Array(per * stride);
  const fd = openSync(job.path, 'r');
  try {
    for (let i = job.first; i < job.end; i += per) {
      const n = Math.min(per, job.end - i);
      const final = i + n === job.chunkCount;
      const want = final ? undefined : n * stride;
      const pos = job.bodyOffset + i * stride;
      const got = readSync(fd, scratch, 0, want ?? scratch.length, pos);
      const input = scratch.subarray(0, got);
      const outStart = i * chunkSize;
      const outLen = got - n * TAG_BYTES;
      await cipher.open({
        ...job.batch,
        first: i,
        final,
        input,
        output: job.output.subarray(outStart, outStart + outLen),
      });
    }
  } finally {
    closeSync(fd);
  }
  return new Uint8Array(0);
}

parentPort!.on('message', async (req: WorkRequest) => {
  try {
    if (req.op === 'open-file') {
      await openFileRange(req.job);
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
