/**
 * Bases and examples for the LoRA trainer's tests: llama GGUFs with large random weights (peaked,
 * position-dependent attention, so a wrong RoPE, head grouping or LoRA scale shows), tied and untied,
 * F32, F16 and Q8_0; and synthetic chat-like token examples.
 */
import { writeLlamaGguf } from '../../src/train/llama/index.js';
import { paramSpecs } from '../../src/train/llama/model.js';
import { metadataSection, type RawTensor, writeGgufWithMetadata } from '../../src/train/lora/base.js';
import type { ChatExample } from '../../src/train/lora/dataset.js';
import { Rng } from '../../src/util/prng.js';
import { floatToHalf, GgmlType, readGgufInfo, readTensorF32 } from '../../src/wire/index.js';

export const SHAPE = { vocab: 356, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 64 };

/** An F32 llama GGUF (the llama trainer's writer: char vocabulary, ChatML), weights of scale 0.3. */
export function bigBase(seed = 123): Uint8Array {
  const rng = new Rng(seed);
  const params = paramSpecs(SHAPE).map((spec) =>
    Float32Array.from({ length: spec.shape.reduce((a, b) => a * b, 1) }, () =>
      spec.init === 'ones' ? 1 + 0.2 * rng.normal() : 0.3 * rng.normal(),
    ),
  );
  return writeLlamaGguf({ shape: SHAPE, context: 256, params, name: 'big' });
}

/**
 * The same file rewritten: without output.weight (tied: llama.cpp then uses token_embd), and/or with
 * its matrices stored as F16 or Q8_0 (norm weights stay F32, as in llama.cpp's own files).
 */
export function rewrite(bytes: Uint8Array, opts: { tied?: boolean; type?: 'F16' | 'Q8_0' }): Uint8Array {
  const info = readGgufInfo(bytes);
  const tensors: RawTensor[] = [];
  for (const t of info.tensors) {
    if (opts.tied && t.name === 'output.weight') continue;
    const values = readTensorF32(bytes, info, t.name);
    if (t.dims.length === 2 && opts.type === 'F16') {
      const data = new Uint8Array(values.length * 2);
      const view = new DataView(data.buffer);
      values.forEach((v, i) => {
        view.setUint16(i * 2, floatToHalf(v), true);
      });
      tensors.push({ name: t.name, dims: t.dims, ggmlType: GgmlType.F16, data });
    } else if (t.dims.length === 2 && opts.type === 'Q8_0') {
      tensors.push({ name: t.name, dims: t.dims, ggmlType: GgmlType.Q8_0, data: quantizeQ8_0(values) });
    } else {
      const start = info.dataOffset + t.offset;
      tensors.push({ ...t, data: bytes.subarray(start, start + t.byteLength) });
    }
  }
  return writeGgufWithMetadata(metadataSection(bytes, info), info.alignment, tensors);
}

/** ggml's quantize_row_q8_0_ref: blocks of 32, scale amax/127 as F16, int8 round(x / scale). */
function quantizeQ8_0(values: Float32Array): Uint8Array {
  const out = new Uint8Array((values.length / 32) * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < values.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(values[b * 32 + j]!));
    const d = amax / 127;
    const id = d === 0 ? 0 : 1 / d;
    view.setUint16(b * 34, floatToHalf(d), true);
    for (let j = 0; j < 32; j++) view.setInt8(b * 34 + 2 + j, Math.round(values[b * 32 + j]! * id));
  }
  return out;
}

/**
 * Chat-like examples over token ids [first, first + span): a prompt of random tokens, then a
 * completion the prompt determines (a fixed phrase per "topic", the prompt's first token), masked to
 * the completion as the dataset reader does.
 */
export function syntheticExamples(count: number, seed: number, first = 40, span = 60): ChatExample[] {
  const rng = new Rng(seed, 77);
  const phrases = Array.from({ length: 4 }, (_, k) =>
    Array.from({ length: 10 }, (_, i) => first + ((k * 13 + i * 7) % span)),
  );
  return Array.from({ length: count }, () => {
    const topic = rng.below(4);
    const prompt = [
      first + topic,
      ...Array.from({ length: 5 + rng.below(6) }, () => first + rng.below(span)),
    ];
    const tokens = Int32Array.from([...prompt, ...phrases[topic]!]);
    const completion = new Uint8Array(tokens.length).fill(1, prompt.length);
    return { tokens, completion };
  });
}
