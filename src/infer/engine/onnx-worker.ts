/**
 * Worker thread for the ONNX embedding engine (onnx.ts): owns one ONNX Runtime session. onnxruntime-node
 * runs a session synchronously on the calling JavaScript thread, so running it here keeps the server's
 * event loop free while a batch is computed, and lets `parallel` workers compute at once.
 *
 * The main thread tokenises and pads; a request is a padded batch of token ids. The worker feeds the
 * inputs the model declares, runs it, pools and L2-normalises (pooling.ts), and returns only the
 * vectors, so the [batch, seq, dim] activations never cross threads.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { type Pooling, poolAndNormalise } from './pooling.js';

export interface OnnxWorkerInit {
  /** The model.onnx bytes; transferred to the worker, dropped once the session exists. */
  model: Uint8Array;
  /** ONNX Runtime intra-op threads. */
  threads: number;
  pooling: Pooling;
}

export type OnnxWorkerReady =
  | { type: 'ready'; inputs: string[]; output: string }
  | { type: 'load-error'; message: string };

export type OnnxWorkerRequest =
  | {
      type: 'embed';
      id: number;
      /** Token ids, `lengths.length` rows of `seq`, right-padded with the pad id. */
      ids: Int32Array;
      lengths: number[];
      seq: number;
    }
  | { type: 'close' };

export type OnnxWorkerReply =
  | {
      id: number;
      vectors: Float32Array;
      dimensions: number;
      /** The model pooled itself ([batch, dim] output); otherwise this worker pooled its tokens. */
      pooled: boolean;
    }
  | { id: number; error: string };

/** Inputs an embedding model may declare, all [batch, seq] integer tensors we can fill. */
const FEEDABLE = new Set(['input_ids', 'attention_mask', 'token_type_ids']);
/**
 * Which output holds the embedding, best first: a model's own pooling (sentence-transformers exports)
 * beats pooling here; otherwise the per-token states. BERT's `pooler_output` is deliberately absent:
 * it is a classification head, not the sentence embedding.
 */
const OUTPUT_PREFERENCE = ['sentence_embedding', 'last_hidden_state', 'token_embeddings', 'embeddings'];

type IntType = 'int64' | 'int32';

interface Plan {
  session: InferenceSession;
  inputs: Map<string, IntType>;
  output: string;
}

async function load(init: OnnxWorkerInit): Promise<Plan> {
  let session: InferenceSession;
  try {
    session = await InferenceSession.create(init.model, {
      intraOpNumThreads: init.threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      // Warnings (e.g. unused initialisers) would go straight to the server's stderr.
      logSeverityLevel: 3,
    });
  } catch (e) {
    throw new Error(`ONNX Runtime cannot load model.onnx: ${(e as Error).message}`);
  }
  const inputs = new Map<string, IntType>();
  for (const meta of session.inputMetadata) {
    if (!FEEDABLE.has(meta.name)) {
      throw new Error(
        `model.onnx declares the input "${meta.name}"; an embedding model may only take ${[...FEEDABLE].join(', ')}`,
      );
    }
    if (!meta.isTensor || (meta.type !== 'int64' && meta.type !== 'int32')) {
      throw new Error(`model.onnx input "${meta.name}" must be an int64 or int32 tensor`);
    }
    inputs.set(meta.name, meta.type);
  }
  if (!inputs.has('input_ids')) throw new Error('model.onnx has no "input_ids" input');
  const names = session.outputNames;
  const output = OUTPUT_PREFERENCE.find((n) => names.includes(n)) ?? names[0];
  if (output === undefined) throw new Error('model.onnx has no outputs');
  const meta = session.outputMetadata.find((m) => m.name === output);
  if (!meta?.isTensor || meta.type !== 'float32') {
    throw new Error(`model.onnx output "${output}" must be a float32 tensor`);
  }
  return { session, inputs, output };
}

function feeds(plan: Plan, ids: Int32Array, lengths: number[], seq: number): Record<string, Tensor> {
  const batch = lengths.length;
  const dims = [batch, seq];
  const tensor = (type: IntType, fill: (i: number) => number): Tensor => {
    if (type === 'int32')
      return new Tensor(
        'int32',
        Int32Array.from({ length: batch * seq }, (_, i) => fill(i)),
        dims,
      );
    const data = new BigInt64Array(batch * seq);
    for (let i = 0; i < data.length; i++) data[i] = BigInt(fill(i));
    return new Tensor('int64', data, dims);
  };
  const out: Record<string, Tensor> = {};
  for (const [name, type] of plan.inputs) {
    if (name === 'input_ids') out[name] = tensor(type, (i) => ids[i]!);
    else if (name === 'attention_mask')
      out[name] = tensor(type, (i) => (i % seq < lengths[Math.floor(i / seq)]! ? 1 : 0));
    // One segment per input: every token is segment A.
    else out[name] = tensor(type, () => 0);
  }
  return out;
}

async function embed(
  plan: Plan,
  pooling: Pooling,
  req: Extract<OnnxWorkerRequest, { type: 'embed' }>,
): Promise<{ vectors: Float32Array<ArrayBuffer>; dimensions: number; pooled: boolean }> {
  const result = await plan.session.run(feeds(plan, req.ids, req.lengths, req.seq), [plan.output]);
  const out = result[plan.output];
  if (out?.type !== 'float32') throw new Error(`model output "${plan.output}" is not float32`);
  try {
    const vectors = poolAndNormalise(out.data as Float32Array, out.dims, req.lengths, pooling);
    return { vectors, dimensions: out.dims[out.dims.length - 1]!, pooled: out.dims.length === 2 };
  } finally {
    out.dispose();
  }
}

async function main(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('onnx-worker.js must run on a worker thread');
  const init = workerData as OnnxWorkerInit;
  let plan: Plan;
  try {
    plan = await load(init);
  } catch (e) {
    port.postMessage({ type: 'load-error', message: (e as Error).message } satisfies OnnxWorkerReady);
    return;
  }
  // ONNX Runtime has copied the weights into the session; the serialised model need not stay alive.
  init.model = new Uint8Array(0);
  port.postMessage({
    type: 'ready',
    inputs: [...plan.inputs.keys()],
    output: plan.output,
  } satisfies OnnxWorkerReady);
  // The engine sends one request at a time per worker, so requests never overlap here.
  port.on('message', (req: OnnxWorkerRequest) => {
    if (req.type === 'close') {
      void plan.session.release().finally(() => port.close());
      return;
    }
    embed(plan, init.pooling, req).then(
      (r) => port.postMessage({ id: req.id, ...r } satisfies OnnxWorkerReply, [r.vectors.buffer]),
      (e: Error) => port.postMessage({ id: req.id, error: e.message } satisfies OnnxWorkerReply),
    );
  });
}

await main();
