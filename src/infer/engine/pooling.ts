/**
 * Turning an embedding model's raw output into one unit vector per input. Web-standard only; used on
 * the ONNX engine's worker threads. A model either pools itself (a [batch, dim] output such as
 * sentence-transformers' `sentence_embedding`) or returns one vector per token ([batch, seq, dim],
 * e.g. `last_hidden_state`), which is pooled here over the tokens the attention mask keeps: their mean
 * (sentence-transformers' default, all-MiniLM-L6-v2) or the first token's vector (CLS pooling, BGE).
 */

export type Pooling = 'mean' | 'cls';

/**
 * Pools and L2-normalises a batch. `lengths[i]` is how many leading positions of row i are real
 * tokens (the rest is right padding); it is ignored for a [batch, dim] output.
 * Returns the vectors back to back, `batch × dim` floats.
 */
export function poolAndNormalise(
  output: Float32Array,
  dims: readonly number[],
  lengths: readonly number[],
  pooling: Pooling,
): Float32Array<ArrayBuffer> {
  const batch = lengths.length;
  if (dims.length !== 2 && dims.length !== 3) {
    throw new RangeError(`expected a [batch, dim] or [batch, seq, dim] output, got [${dims.join(', ')}]`);
  }
  if (dims[0] !== batch) throw new RangeError(`output has ${dims[0]} rows for a batch of ${batch}`);
  const dim = dims[dims.length - 1]!;
  const seq = dims.length === 3 ? dims[1]! : 1;
  if (output.length !== batch * seq * dim) {
    throw new RangeError(`output has ${output.length} values, its shape [${dims.join(', ')}] says otherwise`);
  }
  const out = new Float32Array(batch * dim);
  // Accumulate in float64: a 512-token mean in float32 loses digits that tests comparing a text's
  // vector alone and inside a padded batch would see.
  const acc = new Float64Array(dim);
  for (let b = 0; b < batch; b++) {
    if (dims.length === 2) {
      for (let d = 0; d < dim; d++) acc[d] = output[b * dim + d]!;
    } else {
      const n = lengths[b]!;
      if (!Number.isInteger(n) || n < 1 || n > seq) {
        throw new RangeError(`row ${b} has ${n} tokens, the output has ${seq} positions`);
      }
      acc.fill(0);
      const rows = pooling === 'cls' ? 1 : n;
      for (let t = 0; t < rows; t++) {
        const base = (b * seq + t) * dim;
        for (let d = 0; d < dim; d++) acc[d]! += output[base + d]!;
      }
      for (let d = 0; d < dim; d++) acc[d]! /= rows;
    }
    let norm = 0;
    for (let d = 0; d < dim; d++) norm += acc[d]! * acc[d]!;
    norm = Math.sqrt(norm);
    if (!Number.isFinite(norm)) throw new RangeError(`row ${b} of the output is not finite`);
    // A zero vector has no direction; it stays zero rather than becoming NaN.
    const scale = norm > 0 ? 1 / norm : 0;
    for (let d = 0; d < dim; d++) out[b * dim + d] = acc[d]! * scale;
  }
  return out;
}
