/**
 * llama.cpp (node-llama-cpp) as the independent reference of the training tests: one Llama with the
 * options serving uses, its next-token log-probabilities, ours from logits, and their comparison.
 * node-llama-cpp exposes probabilities (a softmax of llama.cpp's logits), not raw logits, so
 * log-probabilities are compared: log-softmax is the logits up to one additive constant per position,
 * which is all a language model's output means.
 */
import { getLlama, type Llama, LlamaLogLevel, type LlamaModel, type Token } from 'node-llama-cpp';
import { expect } from 'vitest';

/**
 * A Llama with serving's options (src/infer/engine/llama.ts): prebuilt CPU binaries only, never a
 * build or a download, logs silenced; one thread, so tests stay fair to a busy 2-core machine.
 */
export function testLlama(): Promise<Llama> {
  return getLlama({
    gpu: false,
    build: 'never',
    skipDownload: true,
    usePrebuiltBinaries: true,
    progressLogs: false,
    logLevel: LlamaLogLevel.error,
    maxThreads: 1,
  });
}

/**
 * llama.cpp's log-probabilities of the next token after each of `tokens` (F32 KV cache), with the
 * GGUF adapter at `adapterPath` (scale 1) or none. Every row must hold the whole vocabulary.
 */
export async function llamaCppLogProbs(
  model: LlamaModel,
  tokens: readonly Token[],
  vocab: number,
  adapterPath?: string,
): Promise<Float64Array[]> {
  const context = await model.createContext({
    contextSize: 256,
    threads: 1,
    flashAttention: false,
    // The default F16 cache would round keys and values; F32 keeps llama.cpp's arithmetic in F32.
    experimentalKvCacheKeyType: 'F32',
    experimentalKvCacheValueType: 'F32',
    ...(adapterPath ? { lora: { adapters: [{ filePath: adapterPath, scale: 1 }] } } : {}),
  });
  try {
    const out = await context
      .getSequence()
      .controlledEvaluate(tokens.map((t) => [t, { generateNext: { probabilities: true } }] as const));
    return out.map((o) => {
      const probs = o!.next.probabilities!;
      expect(probs.size).toBe(vocab); // greedy sampling leaves the distribution whole
      const row = new Float64Array(vocab);
      for (const [tok, p] of probs) row[tok] = Math.log(p);
      return row;
    });
  } finally {
    await context.dispose();
  }
}

/** Log-softmax of each `vocab`-wide row of `logits` (one row per position). */
export function logSoftmaxRows(logits: Float32Array, vocab: number): Float64Array[] {
  return Array.from({ length: logits.length / vocab }, (_, i) => {
    const row = logits.subarray(i * vocab, (i + 1) * vocab);
    let max = -Infinity;
    for (const x of row) max = Math.max(max, x);
    let sum = 0;
    for (const x of row) sum += Math.exp(x - max);
    const lse = max + Math.log(sum);
    return Float64Array.from(row, (x) => x - lse);
  });
}

/**
 * The largest |a - b| over all positions and tokens, and the widest range of one row of `a`: a
 * small difference only means something when the log-probabilities themselves are spread out.
 */
export function compareLogProbs(a: Float64Array[], b: Float64Array[]): { maxDiff: number; spread: number } {
  let maxDiff = 0;
  let spread = 0;
  a.forEach((row, i) => {
    let lo = Infinity;
    let hi = -Infinity;
    row.forEach((lp, v) => {
      maxDiff = Math.max(maxDiff, Math.abs(lp - b[i]![v]!));
      lo = Math.min(lo, lp);
      hi = Math.max(hi, lp);
    });
    spread = Math.max(spread, hi - lo);
  });
  return { maxDiff, spread };
}
