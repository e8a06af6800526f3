/**
 * A request queue per model: at most `concurrency` requests run on the engine at once, at most
 * `maxQueued` wait; the next one gets 429 rather than an unbounded wait. A waiting request whose
 * client goes away leaves the queue at once.
 */
import { InferError } from './errors.js';

export interface QueueOptions {
  concurrency: number;
  maxQueued: number;
}

interface Waiter {
  resolve: (release: () => void) => void;
  reject: (e: Error) => void;
}

export class RequestQueue {
  private running = 0;
  private readonly waiting: Waiter[] = [];

  constructor(readonly options: QueueOptions) {
    if (!(options.concurrency >= 1) || !(options.maxQueued >= 0)) {
      throw new RangeError('a request queue needs concurrency >= 1 and maxQueued >= 0');
    }
  }

  get active(): number {
    return this.running;
  }
  get queued(): number {
    return this.waiting.length;
  }

  /** Resolves with a release function once a slot is free; call it exactly once when done. */
  acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) return Promise.reject(new InferError('client_closed', 'the client went away'));
    if (this.running < this.options.concurrency) {
      this.running++;
      return Promise.resolve(this.releaser());
    }
    if (this.waiting.length >= this.options.maxQueued) {
      return Promise.reject(
        new InferError(
          'queue_full',
          `the server is busy: ${this.running} requests running and ${this.waiting.length} waiting; retry shortly`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new InferError('client_closed', 'the client went away while the request was queued'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      waiter.resolve = (release) => {
        signal.removeEventListener('abort', onAbort);
        resolve(release);
      };
      this.waiting.push(waiter);
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next.resolve(this.releaser());
      else this.running--;
    };
  }
}
