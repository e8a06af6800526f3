/** An in-memory TrainingSession and an HTTP-over-Unix-socket caller, for the training API's tests. */
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import type { JobInfo, TrainingSession } from '../../src/train/session.js';

export interface SavedCheckpoint {
  number: number;
  step: number;
  state: Uint8Array;
  sha256: string;
}

/** Keeps checkpoints in memory, records metrics and finish; `failSave` / `onSave` steer saves. */
export class FakeSession implements TrainingSession {
  readonly checkpoints: SavedCheckpoint[] = [];
  readonly metricsSeen: Record<string, number>[] = [];
  finishCalls: (Record<string, number> | undefined)[] = [];
  /** Thrown by the next save (then cleared). */
  failSave: Error | undefined;
  /** Thrown by every latest(). */
  failLatest: Error | undefined;
  /** Awaited inside save, after the checkpoint is recorded and before the answer. */
  onSave: ((c: SavedCheckpoint) => void | Promise<void>) | undefined;
  /** Saves running right now, and the most that ever ran at once. */
  active = 0;
  maxActive = 0;
  /** Log of calls, in order ("save 3", "finish"). */
  readonly calls: string[] = [];

  constructor(readonly info: JobInfo) {}

  async latest() {
    if (this.failLatest) throw this.failLatest;
    const last = this.checkpoints.at(-1);
    return last ? { number: last.number, step: last.step, state: last.state.slice() } : null;
  }

  async save(state: Uint8Array, step: number) {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      this.calls.push(`save ${step}`);
      const fail = this.failSave;
      if (fail) {
        this.failSave = undefined;
        throw fail;
      }
      const c: SavedCheckpoint = {
        number: this.checkpoints.length + 1,
        step,
        state: state.slice(),
        sha256: createHash('sha256').update(state).digest('hex'),
      };
      this.checkpoints.push(c);
      await this.onSave?.(c);
      return { number: c.number, sha256: c.sha256 };
    } finally {
      this.active--;
    }
  }

  metrics(m: Record<string, number>): void {
    this.metricsSeen.push(m);
  }

  finish(m?: Record<string, number>): void {
    this.calls.push('finish');
    this.finishCalls.push(m);
  }
}

/** An error with a code, as the runner's TrainError would be. */
export function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

export function jobInfo(over: Partial<JobInfo> = {}): JobInfo {
  return {
    job: 'a'.repeat(64),
    name: 'test-job',
    hyperparameters: { steps: 10, lr: 0.01 },
    seed: 42,
    inputs: { data: '/private/data.csv' },
    outputDir: '/private/out',
    ...over,
  };
}

export interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/**
 * One request on the socket. `body` as an array is sent chunked (no Content-Length), one write each.
 */
export function call(
  socketPath: string,
  path: string,
  method = 'GET',
  body?: Uint8Array | string | (Uint8Array | string)[],
  headers: Record<string, string> = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = request({ socketPath, path, method, agent: false, headers }, (res) => {
      answered = true;
      const parts: Buffer[] = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () =>
        resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }),
      );
      res.on('error', reject);
    });
    // A refusal may come before the whole upload went out (EPIPE): the answer decides.
    req.on('error', (e) => {
      if (!answered) reject(e);
    });
    if (Array.isArray(body)) {
      for (const part of body) req.write(part);
      req.end();
    } else req.end(body);
  });
}

export const problemOf = (r: Res) =>
  JSON.parse(r.body.toString()) as { type: string; title: string; status: number; detail: string };

/** The problem's type without its URL prefix. */
export const typeOf = (r: Res) => problemOf(r).type.replace('https://cloister.dev/problems/', '');
