/**
 * Policy workers: the broker evaluates a policy whose worst case, CEL errors included, may hold the
 * event loop for more than a few ms (evaluatesOnMainThread is false) on a small pool of worker
 * threads, each evaluation under a time limit. Over the limit the worker is terminated (the CEL
 * library cannot be interrupted otherwise) and replaced, and the release is denied with a reason; a
 * bounded queue keeps a flood of costly evaluations from growing memory (excess is denied the same
 * way), and no one tenant may hold more than a quarter of it, so a tenant flooding its own costly
 * policy cannot starve everyone else's. Node-only: src/policy stays web-standard.
 */
import { Worker } from 'node:worker_threads';
import { type PolicyInput, PUBLIC_DENIAL_MESSAGE } from '../policy/index.js';
import type { PolicyJob, PolicyRun, PolicyWorkerMessage } from './policy-run.js';

export interface PolicyPoolOptions {
  /** Longest an evaluation may run on a worker, in ms (config `policyTimeLimitMs`). */
  timeLimitMs: number;
  /** Worker threads, started when first needed. */
  workers?: number;
  /** Evaluations that may wait for a worker; more are denied. */
  maxQueued?: number;
  /** The worker's module (tests running the sources point at the built one: workers load compiled files). */
  workerUrl?: URL;
}

interface Pending {
  job: PolicyJob;
  /** Whose share of the queue it uses (a tenant, or '' for the operator). */
  share: string;
  resolve: (r: PolicyRun) => void;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  /** The job it runs and its deadline timer. */
  busy?: { pending: Pending; timer: NodeJS.Timeout };
}

const denial = (reason: string): PolicyRun => ({
  decision: { allow: false, reasons: [reason], publicMessage: PUBLIC_DENIAL_MESSAGE },
});

export class PolicyPool {
  readonly timeLimitMs: number;
  readonly #size: number;
  readonly #maxQueued: number;
  readonly #url: URL;
  readonly #slots = new Set<Slot>();
  readonly #queue: Pending[] = [];
  /** Queued evaluations per share. */
  readonly #queuedBy = new Map<string, number>();
  #nextId = 0;
  #closed = false;
  /** Workers started and evaluations cut off, for tests and metrics. */
  readonly stats = { started: 0, timedOut: 0, evaluated: 0, refusedQueueFull: 0 };

  constructor(o: PolicyPoolOptions) {
    if (!(Number.isFinite(o.timeLimitMs) && o.timeLimitMs > 0))
      throw new RangeError('policy time limit must be a positive number of ms');
    this.timeLimitMs = o.timeLimitMs;
    this.#size = o.workers ?? 2;
    this.#maxQueued = o.maxQueued ?? 32;
    this.#url = o.workerUrl ?? new URL('./policy-worker.js', import.meta.url);
  }

  /**
   * Evaluates (and explains) a policy on a worker, queued under `share` (the tenant whose repository the
   * resource is in, '' for the operator). Never rejects: every failure is a denial.
   */
  evaluate(source: string, input: PolicyInput, explainClauses: boolean, share = ''): Promise<PolicyRun> {
    if (this.#closed) return Promise.resolve(denial('policy evaluation failed: the broker is shutting down'));
    const perShare = Math.max(1, Math.floor(this.#maxQueued / 4));
    if ((this.#queuedBy.get(share) ?? 0) >= perShare) {
      this.stats.refusedQueueFull++;
      return Promise.resolve(
        denial(
          `policy evaluation refused: ${perShare} costly policy evaluations of this tenant are already ` +
            'waiting for a policy worker (try again later)',
        ),
      );
    }
    if (this.#queue.length >= this.#maxQueued) {
      this.stats.refusedQueueFull++;
      return Promise.resolve(
        denial(
          `policy evaluation refused: ${this.#maxQueued} costly policy evaluations are already waiting ` +
            'for a policy worker (try again later)',
        ),
      );
    }
    return new Promise((resolve) => {
      this.#queue.push({ job: { id: this.#nextId++, source, input, explainClauses }, share, resolve });
      this.#queuedBy.set(share, (this.#queuedBy.get(share) ?? 0) + 1);
      this.#pump();
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const p of this.#queue.splice(0))
      p.resolve(denial('policy evaluation failed: the broker is shutting down'));
    this.#queuedBy.clear();
    const slots = [...this.#slots];
    this.#slots.clear();
    for (const s of slots)
      if (s.busy) this.#finish(s, denial('policy evaluation failed: the broker is shutting down'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  /** The next queued evaluation, its share of the queue given back. */
  #shift(): Pending | undefined {
    const p = this.#queue.shift();
    if (p) {
      const left = (this.#queuedBy.get(p.share) ?? 1) - 1;
      if (left > 0) this.#queuedBy.set(p.share, left);
      else this.#queuedBy.delete(p.share);
    }
    return p;
  }

  #pump(): void {
    while (this.#queue.length > 0) {
      const idle = [...this.#slots].find((s) => s.ready && s.busy === undefined);
      if (idle === undefined) {
        // Start another worker if there is room; it takes the queue when it is ready.
        if (this.#slots.size < this.#size && ![...this.#slots].some((s) => !s.ready)) this.#start();
        return;
      }
      const pending = this.#shift()!;
      try {
        // Throws for a value the structured clone cannot carry; verifier claims and JSON cannot hold
        // one today, but a throw here would escape a worker's message handler and end the broker.
        idle.worker.postMessage(pending.job);
      } catch (e) {
        pending.resolve(
          denial(
            `policy evaluation failed: its input cannot be sent to a policy worker (${(e as Error).message})`,
          ),
        );
        continue;
      }
      const timer = setTimeout(() => this.#timeout(idle), this.timeLimitMs);
      idle.busy = { pending, timer };
    }
  }

  #start(): void {
    const worker = new Worker(this.#url);
    // The pool must not keep a process alive on its own (the server does).
    worker.unref();
    const slot: Slot = { worker, ready: false };
    this.#slots.add(slot);
    this.stats.started++;
    worker.on('message', (m: PolicyWorkerMessage) => {
      if (!this.#slots.has(slot)) return;
      if (m.type === 'ready') slot.ready = true;
      else if (slot.busy?.pending.job.id === m.id) {
        this.stats.evaluated++;
        this.#finish(slot, m.run);
      }
      this.#pump();
    });
    worker.on('error', (e) =>
      this.#lose(slot, `policy evaluation failed: the policy worker failed: ${e.message}`),
    );
    worker.on('exit', () => this.#lose(slot, 'policy evaluation failed: the policy worker exited'));
  }

  #finish(slot: Slot, run: PolicyRun): void {
    const busy = slot.busy;
    if (busy === undefined) return;
    clearTimeout(busy.timer);
    slot.busy = undefined;
    busy.pending.resolve(run);
  }

  #timeout(slot: Slot): void {
    this.stats.timedOut++;
    // The running evaluation cannot be interrupted: drop the worker; a fresh one takes its place.
    this.#slots.delete(slot);
    this.#finish(slot, denial(`policy evaluation exceeded its time limit of ${this.timeLimitMs} ms`));
    void slot.worker.terminate();
    this.#pump();
  }

  /** A worker that died (or never started): its job is denied, and the queue waits for another. */
  #lose(slot: Slot, reason: string): void {
    if (!this.#slots.delete(slot)) return;
    this.#finish(slot, denial(reason));
    if (!slot.ready) {
      // It failed while loading: the next would too, so deny what waits rather than retry forever.
      for (const p of this.#queue.splice(0)) p.resolve(denial(reason));
      this.#queuedBy.clear();
      return;
    }
    this.#pump();
  }
}
