/** Worker thread for WorkerPoolCipher: runs one batch at a time with the fastest local backend. */
import { parentPort } from 'node:worker_threads';
import { ChunkAuthError, type ChunkBatch } from './aead.js';
import { localCipher } from './local-cipher.js';

export interface WorkRequest {
  id: number;
  op: 'seal' | 'open';
  batch: ChunkBatch;
}

export type WorkReply =
  | { id: number; out: Uint8Array }
  | { id: number; authIndex: number }
  | { id: number; error: string };

const cipher = localCipher();

parentPort!.on('message', async (req: WorkRequest) => {
  try {
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
