/**
 * A ChunkCipher that spreads batches over worker threads, one batch per worker at a time. Together with
 * the ordered in-flight queue of the streams in container.ts this keeps every core busy while output
 * stays in order and memory stays bounded (in-flight batches × batch size).
 */
import { Worker } from 'node:worker_threads';
import { ChunkAuthError, type ChunkBatch, type ChunkCipher } from './aead.js';
import type { FileRangeJob, WorkReply, WorkRequest } from './worker.js';

interface Job {
  req: WorkRequest;
  resolve: (b: Uint8Array) => void;
  reject: (e: Error) => void;
}

export class WorkerPoolCipher implements ChunkCipher {
  readonly name: string;
  private readonly idle: Worker[] = [];
  private readonly all: Worker[] = [];
  private readonly waiting: Job[] = [];
  private readonly running = new Map<number, Job>();
  private nextId = 0;

  constructor(readonly size: number) {
    // A pool of no workers would queue every job and never answer it.
    if (!Number.isSafeInteger(size) || size < 1)
      throw new RangeError(`a worker pool needs a whole number ≥ 1 of workers, not ${size}`);
    this.name = `workers×${size}`;
    const url = new URL('./worker.js', import.meta.url);
    for (let i = 0; i < size; i++) {
      const w = new Worker(url);
      w.on('message', (r: WorkReply) => this.done(w, r));
      w.on('error', (e) => this.failAll(e));
      this.all.push(w);
      this.idle.push(w);
    }
  }

  seal(batch: ChunkBatch): Promise<Uint8Array> {
    return this.submit('seal', batch);
  }

  open(batch: ChunkBatch): Promise<Uint8Array> {
    return this.submit('open', batch);
  }

  /** Runs a range of chunks of a file on a worker, which reads and writes the files itself. */
  fileRange(job: FileRangeJob): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({
        req: { id: this.nextId++, op: 'file', job },
        resolve: () => resolve(),
        reject,
      });
      this.pump();
    });
  }

  /** SHA-256 of a file, computed on a worker. */
  digestFile(path: string): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ req: { id: this.nextId++, op: 'sha256', path }, resolve, reject });
      this.pump();
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((w) => w.terminate()));
  }

  private submit(op: 'seal' | 'open', batch: ChunkBatch): Promise<Uint8Array> {
    const { output, ...rest } = batch;
    return new Promise<Uint8Array>((resolve, reject) => {
      this.waiting.push({ req: { id: this.nextId++, op, batch: rest }, resolve, reject });
      this.pump();
    }).then((out) => {
      // A destination in this thread is unreachable from a worker: copy into it on return.
      if (!output) return out;
      output.set(out);
      return output;
    });
  }

  private pump(): void {
    while (this.idle.length > 0 && this.waiting.length > 0) {
      const w = this.idle.pop()!;
      const job = this.waiting.shift()!;
      this.running.set(job.req.id, job);
      w.postMessage(job.req, transferable(job.req));
    }
  }

  private done(w: Worker, r: WorkReply): void {
    const job = this.running.get(r.id);
    this.running.delete(r.id);
    this.idle.push(w);
    if (job) {
      if ('out' in r) job.resolve(r.out);
      else if ('authIndex' in r) job.reject(new ChunkAuthError(r.authIndex));
      else job.reject(new Error(r.error));
    }
    this.pump();
  }

  private failAll(e: Error): void {
    for (const j of [...this.running.values(), ...this.waiting]) j.reject(e);
    this.running.clear();
    this.waiting.length = 0;
  }
}

/** Batch inputs the caller gave up may move to the worker instead of being copied. */
function transferable(req: WorkRequest): ArrayBuffer[] {
  if (req.op !== 'seal' && req.op !== 'open') return [];
  const { input, disposable } = req.batch;
  const whole = input.byteOffset === 0 && input.byteLength === input.buffer.byteLength;
  return disposable && whole && input.buffer instanceof ArrayBuffer ? [input.buffer] : [];
}
