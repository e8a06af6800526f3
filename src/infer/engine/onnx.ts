/**
 * The ONNX embedding engine behind `/v1/embeddings`. It serves a model bundle (a tar of a Hugging
 * Face-style model directory) straight from memory: the tar is read in place, ONNX Runtime gets the
 * model bytes, the tokenizer is built from the bundle's JSON, and nothing is written to disk or fetched.
 *
 * Threads: tokenising, padding and batching happen on the calling thread; each of the `parallel`
 * sessions runs on its own worker thread (onnx-worker.ts), because onnxruntime-node computes a batch
 * synchronously on the thread that calls it and would otherwise stall the server's event loop.
 *
 * Bundle layout: `model.onnx` or `onnx/model.onnx`, `tokenizer.json`, and normally
 * `tokenizer_config.json`; optionally `config.json`, and sentence-transformers' `1_Pooling/config.json`
 * (mean or CLS pooling) and `sentence_bert_config.json` (its `max_seq_length` caps the context). A
 * bundle whose files all sit in one top-level directory (`tar -cf b.tar all-MiniLM-L6-v2`) is read
 * as if they did not.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { PreTrainedTokenizer } from '@huggingface/transformers';
import { assertInstalled, importOptional } from '../../util/optional/node.js';
import { readTar } from '../models/tar.js';
import type { OnnxWorkerInit, OnnxWorkerReady, OnnxWorkerReply, OnnxWorkerRequest } from './onnx-worker.js';
import type { Pooling } from './pooling.js';
import { type EmbeddingEngine, type EmbeddingResult, EngineError } from './types.js';

// Optional peer dependencies: this module is imported only when an ONNX bundle is served (engines.ts,
// whose warm-up imports it while the model is unsealed), so their absence is reported before that work.
// onnxruntime-node itself is loaded by the workers (onnx-worker.ts).
assertInstalled('onnxruntime-node', 'serving ONNX embedding models');
assertInstalled('@huggingface/transformers', 'serving ONNX embedding models');

export interface OnnxEngineOptions {
  /** The unsealed bundle (tar bytes). Only read during loading; the engine keeps no reference to it. */
  bundle: Uint8Array;
  /**
   * How many `embed` calls compute at once, each on its own worker thread with its own ONNX Runtime
   * session (so the model's weights are held `parallel` times). Further calls wait in FIFO order,
   * batch by batch. Default 1, which already uses every core within a batch (see `threads`).
   */
  parallel?: number;
  /** ONNX Runtime intra-op threads per session. Default: the machine's cores divided by `parallel`. */
  threads?: number;
  /** Caps `contextLength` below what the model's tokenizer config allows. */
  maxInputTokens?: number;
  /** Most inputs computed in one ONNX Runtime run. Default 32. */
  batchSize?: number;
  log?: (line: string) => void;
}

/** Padded tokens per run at most (unless a single input is longer): bounds a run's memory and time. */
const BATCH_TOKENS = 16_384;
/** When neither tokenizer_config.json nor config.json says how long an input may be (BERT's limit). */
const FALLBACK_CONTEXT = 512;
/** Hugging Face writes int(1e30) as model_max_length when a tokenizer has no limit of its own. */
const NO_LIMIT = 1e9;

function badModel(message: string, cause?: unknown): EngineError {
  return new EngineError('bad-model', message, cause === undefined ? undefined : { cause });
}

function aborted(signal: AbortSignal): EngineError {
  return new EngineError('aborted', 'the embedding request was aborted', { cause: signal.reason });
}

function closed(): EngineError {
  return new EngineError('engine-closed', 'the embedding engine is closed');
}

// --- bundle --------------------------------------------------------------------------------------

type Json = Record<string, unknown>;

interface ModelFiles {
  modelPath: string;
  model: Uint8Array;
  tokenizer: Json;
  tokenizerConfig: Json;
  config: Json | undefined;
  /** From 1_Pooling/config.json; `unsupported` names a mode this engine cannot apply. */
  pooling: Pooling | { unsupported: string };
  maxSeqLength: number | undefined;
}

const MODEL_PATHS = ['model.onnx', 'onnx/model.onnx'];

/** Drops a single top-level directory that every file sits in, if the model is not at the top. */
function unwrap(files: Map<string, Uint8Array>): Map<string, Uint8Array> {
  if (MODEL_PATHS.some((p) => files.has(p)) || files.size === 0) return files;
  const paths = [...files.keys()];
  const top = paths[0]!.split('/')[0]!;
  if (!paths.every((p) => p.startsWith(`${top}/`))) return files;
  return new Map([...files].map(([p, b]) => [p.slice(top.length + 1), b]));
}

function jsonFile(files: Map<string, Uint8Array>, path: string): Json | undefined {
  const bytes = files.get(path);
  if (!bytes) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw badModel(`${path} in the model bundle is not valid JSON: ${(e as Error).message}`, e);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw badModel(`${path} in the model bundle is not a JSON object`);
  }
  return value as Json;
}

function poolingOf(config: Json | undefined): ModelFiles['pooling'] {
  if (!config) return 'mean';
  const on = Object.entries(config)
    .filter(([k, v]) => k.startsWith('pooling_mode_') && v === true)
    .map(([k]) => k.slice('pooling_mode_'.length));
  if (on.length === 1 && on[0] === 'mean_tokens') return 'mean';
  if (on.length === 1 && on[0] === 'cls_token') return 'cls';
  return { unsupported: on.length === 0 ? 'none' : on.join(' + ') };
}

function positiveInt(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 && v < NO_LIMIT ? v : undefined;
}

function openBundle(bundle: Uint8Array): ModelFiles {
  let files: Map<string, Uint8Array>;
  try {
    files = unwrap(readTar(bundle));
  } catch (e) {
    throw badModel(`the model bundle is not a readable tar archive: ${(e as Error).message}`, e);
  }
  const listing = () => {
    const names = [...files.keys()].slice(0, 8).join(', ');
    return files.size === 0 ? 'it has no files' : `it has ${names}${files.size > 8 ? ', …' : ''}`;
  };
  const modelPath = MODEL_PATHS.find((p) => files.has(p));
  if (!modelPath) throw badModel(`the model bundle has no model.onnx or onnx/model.onnx (${listing()})`);
  const tokenizer = jsonFile(files, 'tokenizer.json');
  if (!tokenizer) throw badModel(`the model bundle has no tokenizer.json (${listing()})`);
  const sbert = jsonFile(files, 'sentence_bert_config.json');
  return {
    modelPath,
    model: files.get(modelPath)!,
    tokenizer,
    tokenizerConfig: jsonFile(files, 'tokenizer_config.json') ?? {},
    config: jsonFile(files, 'config.json'),
    pooling: poolingOf(jsonFile(files, '1_Pooling/config.json')),
    maxSeqLength: positiveInt(sbert?.['max_seq_length']),
  };
}

// --- tokenizer -----------------------------------------------------------------------------------

async function buildTokenizer(files: ModelFiles): Promise<PreTrainedTokenizer> {
  const transformers = await importOptional<typeof import('@huggingface/transformers')>(
    '@huggingface/transformers',
    'serving ONNX embedding models',
  );
  // The tokenizer is built from objects in memory; these make any attempt to fetch or read a file
  // fail instead of reaching the network or the disk.
  transformers.env.allowRemoteModels = false;
  transformers.env.allowLocalModels = false;
  const name = files.tokenizerConfig['tokenizer_class'];
  const candidate =
    typeof name === 'string'
      ? (transformers as Record<string, unknown>)[name.replace(/Fast$/, '')]
      : undefined;
  // The config's class when it is one of the library's tokenizers (they adjust pre/post-processing);
  // the base class, which follows tokenizer.json alone, otherwise.
  const Tokenizer =
    typeof candidate === 'function' && candidate.prototype instanceof transformers.PreTrainedTokenizer
      ? (candidate as typeof transformers.PreTrainedTokenizer)
      : transformers.PreTrainedTokenizer;
  let tokenizer: PreTrainedTokenizer;
  try {
    tokenizer = new Tokenizer(files.tokenizer, files.tokenizerConfig);
  } catch (e) {
    throw badModel(`tokenizer.json cannot be loaded: ${(e as Error).message}`, e);
  }
  if (!Number.isInteger(tokenizer.pad_token_id)) {
    // Right padding is masked out, so any id serves; 0 is a valid id in every vocabulary.
    tokenizer.pad_token_id = 0;
  }
  return tokenizer;
}

// --- workers -------------------------------------------------------------------------------------

interface Job {
  id: number;
  resolve: (r: Extract<OnnxWorkerReply, { vectors: Float32Array }>) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  job?: Job;
}

interface Waiter {
  resolve: (slot: Slot) => void;
  reject: (e: Error) => void;
}

/** `parallel` worker threads, one batch each at a time, handed out in FIFO order. */
class WorkerPool {
  private readonly live = new Set<Slot>();
  private readonly idle: Slot[] = [];
  private readonly waiting: Waiter[] = [];
  private nextId = 0;
  private closing = false;
  private drained?: () => void;

  private constructor(private readonly log: (line: string) => void) {}

  static async start(
    model: Uint8Array,
    count: number,
    threads: number,
    pooling: Pooling,
    log: (line: string) => void,
  ) {
    const pool = new WorkerPool(log);
    const url = new URL('./onnx-worker.js', import.meta.url);
    const starts = Array.from({ length: count }, () => {
      const copy = model.slice();
      const init: OnnxWorkerInit = { model: copy, threads, pooling };
      const worker = new Worker(url, { workerData: init, transferList: [copy.buffer] });
      return new Promise<Slot>((resolve, reject) => {
        const onError = (e: Error) =>
          reject(new EngineError('engine-failed', `ONNX worker failed to start: ${e.message}`));
        worker.once('error', onError);
        worker.once('message', (m: OnnxWorkerReady) => {
          worker.off('error', onError);
          if (m.type === 'load-error') reject(badModel(m.message));
          else resolve(pool.adopt(worker));
        });
      }).catch(async (e: unknown) => {
        await worker.terminate();
        throw e;
      });
    });
    const results = await Promise.allSettled(starts);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await pool.close();
      throw failed.reason;
    }
    return pool;
  }

  private adopt(worker: Worker): Slot {
    const slot: Slot = { worker };
    this.live.add(slot);
    this.idle.push(slot);
    worker.on('message', (r: OnnxWorkerReply) => {
      const job = slot.job;
      if (!job || job.id !== r.id) return;
      slot.job = undefined;
      if ('error' in r) job.reject(new EngineError('engine-failed', `ONNX Runtime failed: ${r.error}`));
      else job.resolve(r);
      this.release(slot);
    });
    const lost = (why: string) => {
      if (!this.live.delete(slot)) return;
      const i = this.idle.indexOf(slot);
      if (i >= 0) this.idle.splice(i, 1);
      if (!this.closing) this.log(`onnx: worker lost (${why}); ${this.live.size} left`);
      slot.job?.reject(new EngineError('engine-failed', `the ONNX worker stopped: ${why}`));
      slot.job = undefined;
      if (this.live.size === 0) {
        for (const w of this.waiting.splice(0))
          w.reject(new EngineError('engine-failed', 'no ONNX worker is left'));
      }
      this.checkDrained();
    };
    worker.on('error', (e) => lost(e.message));
    worker.on('exit', (code) => lost(`exit code ${code}`));
    return slot;
  }

  get size(): number {
    return this.live.size;
  }

  async run(ids: Int32Array<ArrayBuffer>, lengths: number[], seq: number, signal: AbortSignal) {
    const slot = await this.acquire(signal);
    return new Promise<Extract<OnnxWorkerReply, { vectors: Float32Array }>>((resolve, reject) => {
      const id = this.nextId++;
      slot.job = { id, resolve, reject };
      const req: OnnxWorkerRequest = { type: 'embed', id, ids, lengths, seq };
      slot.worker.postMessage(req, [ids.buffer]);
    });
  }

  private acquire(signal: AbortSignal): Promise<Slot> {
    if (this.closing) return Promise.reject(closed());
    if (this.live.size === 0)
      return Promise.reject(new EngineError('engine-failed', 'no ONNX worker is left'));
    const slot = this.idle.shift();
    if (slot) return Promise.resolve(slot);
    return new Promise<Slot>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(aborted(signal));
      };
      const waiter: Waiter = {
        resolve: (s) => {
          signal.removeEventListener('abort', onAbort);
          resolve(s);
        },
        reject: (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private release(slot: Slot): void {
    if (!this.live.has(slot)) return;
    const next = this.waiting.shift();
    if (next) next.resolve(slot);
    else this.idle.push(slot);
    this.checkDrained();
  }

  private checkDrained(): void {
    // A slot is out of `idle` from the moment it is handed out, before its job is posted.
    if (this.drained && this.idle.length === this.live.size) this.drained();
  }

  /** Refuses new work, lets running batches finish, then has every worker release its session. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const w of this.waiting.splice(0)) w.reject(closed());
    await new Promise<void>((resolve) => {
      this.drained = resolve;
      this.checkDrained();
    });
    await Promise.all(
      [...this.live].map(async ({ worker }) => {
        const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
        worker.postMessage({ type: 'close' } satisfies OnnxWorkerRequest);
        const timer = setTimeout(() => void worker.terminate(), 5000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}

// --- engine --------------------------------------------------------------------------------------

/** Every input's token ids, special tokens included; refuses what the model cannot take. */
function tokenize(tokenizer: PreTrainedTokenizer, contextLength: number, inputs: string[]): number[][] {
  if (!Array.isArray(inputs) || inputs.length === 0) {
    throw new EngineError('bad-request', 'input must be a non-empty list of strings');
  }
  return inputs.map((text, i) => {
    if (typeof text !== 'string') throw new EngineError('bad-request', `input[${i}] is not a string`);
    if (text === '') throw new EngineError('bad-request', `input[${i}] is an empty string`);
    let ids: number[];
    try {
      ids = tokenizer.encode(text);
    } catch (e) {
      throw new EngineError('engine-failed', `the tokenizer failed on input[${i}]: ${(e as Error).message}`, {
        cause: e,
      });
    }
    if (ids.length > contextLength) {
      throw new EngineError(
        'prompt-too-long',
        `input[${i}] is ${ids.length} tokens; this model takes at most ${contextLength}`,
      );
    }
    return ids;
  });
}

class OnnxEmbeddingEngine implements EmbeddingEngine {
  readonly kind = 'embedding';
  private closing?: Promise<void>;

  constructor(
    readonly dimensions: number,
    readonly contextLength: number,
    readonly parallel: number,
    private readonly tokenizer: PreTrainedTokenizer,
    private readonly pool: WorkerPool,
    private readonly batchSize: number,
  ) {}

  async embed(inputs: string[], signal: AbortSignal): Promise<EmbeddingResult> {
    if (this.closing) throw closed();
    if (signal.aborted) throw aborted(signal);
    const tokens = tokenize(this.tokenizer, this.contextLength, inputs);
    const vectors: Float32Array[] = new Array(tokens.length);
    // Longest first, so each batch holds inputs of similar length and little padding is computed.
    const order = tokens.map((_, i) => i).sort((a, b) => tokens[b]!.length - tokens[a]!.length);
    for (let start = 0; start < order.length; ) {
      const seq = tokens[order[start]!]!.length;
      let end = start + 1;
      while (end < order.length && end - start < this.batchSize && (end - start + 1) * seq <= BATCH_TOKENS)
        end++;
      const batch = order.slice(start, end);
      start = end;
      if (signal.aborted) throw aborted(signal);
      const ids = new Int32Array(batch.length * seq).fill(this.tokenizer.pad_token_id);
      for (const [row, idx] of batch.entries()) ids.set(tokens[idx]!, row * seq);
      const lengths = batch.map((idx) => tokens[idx]!.length);
      const reply = await this.pool.run(ids, lengths, seq, signal);
      if (reply.dimensions !== this.dimensions) {
        throw new EngineError(
          'engine-failed',
          `model returned ${reply.dimensions} dimensions, not ${this.dimensions}`,
        );
      }
      batch.forEach((idx, row) => {
        vectors[idx] = reply.vectors.slice(row * this.dimensions, (row + 1) * this.dimensions);
      });
    }
    return { vectors, promptTokens: tokens.reduce((n, t) => n + t.length, 0) };
  }

  close(): Promise<void> {
    this.closing ??= this.pool.close();
    return this.closing;
  }
}

function optionInt(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min)
    throw new RangeError(`${name} must be an integer of at least ${min}, not ${v}`);
  return v;
}

/**
 * Loads an ONNX embedding model bundle. A bundle that is not a tar archive, lacks model.onnx or
 * tokenizer.json, or whose model ONNX Runtime cannot load or run is refused with `bad-model`.
 */
export async function loadOnnxEngine(options: OnnxEngineOptions): Promise<EmbeddingEngine> {
  const started = performance.now();
  const log = options.log ?? (() => {});
  const parallel = optionInt('parallel', options.parallel, 1, 1);
  const threads = optionInt(
    'threads',
    options.threads,
    Math.max(1, Math.floor(availableParallelism() / parallel)),
    1,
  );
  const batchSize = optionInt('batchSize', options.batchSize, 32, 1);
  const files = openBundle(options.bundle);
  const tokenizer = await buildTokenizer(files);

  const limits = [
    positiveInt(tokenizer.model_max_length),
    positiveInt(files.config?.['max_position_embeddings']),
    files.maxSeqLength,
  ].filter((n): n is number => n !== undefined);
  if (limits.length === 0) log(`onnx: the bundle states no input limit; assuming ${FALLBACK_CONTEXT} tokens`);
  let contextLength = limits.length > 0 ? Math.min(...limits) : FALLBACK_CONTEXT;
  if (options.maxInputTokens !== undefined) {
    contextLength = Math.min(contextLength, optionInt('maxInputTokens', options.maxInputTokens, 0, 1));
  }

  const pooling = typeof files.pooling === 'string' ? files.pooling : 'mean';
  const pool = await WorkerPool.start(files.model, parallel, threads, pooling, log);
  let dimensions: number;
  let pooled: boolean;
  // One real run before serving: a model that loads but cannot compute fails here, not per request.
  try {
    const probe = tokenizer.encode('hello');
    const reply = await pool.run(
      Int32Array.from(probe),
      [probe.length],
      probe.length,
      new AbortController().signal,
    );
    dimensions = reply.dimensions;
    pooled = reply.pooled;
    if (typeof files.pooling !== 'string' && !pooled) {
      throw new Error(
        `1_Pooling/config.json asks for ${files.pooling.unsupported} pooling; only mean and CLS pooling are supported`,
      );
    }
  } catch (e) {
    await pool.close();
    throw e instanceof EngineError && e.code === 'bad-model'
      ? e
      : badModel(`model.onnx cannot compute an embedding: ${(e as Error).message}`, e);
  }
  log(
    `onnx: ${files.modelPath} (${(files.model.length / 1e6).toFixed(1)} MB) loaded in ${Math.round(performance.now() - started)} ms: ` +
      `${dimensions} dimensions, ${contextLength} tokens, ${pooled ? "the model's own" : pooling} pooling, ${parallel} worker(s) × ${threads} thread(s)`,
  );
  return new OnnxEmbeddingEngine(dimensions, contextLength, parallel, tokenizer, pool, batchSize);
}
