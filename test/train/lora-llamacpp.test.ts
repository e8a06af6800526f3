import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Llama, Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLoraBase } from '../../src/train/lora/base.js';
import { createLoraTrainerFrom, type LoraTrainer } from '../../src/train/lora/trainer.js';
import { Rng } from '../../src/util/prng.js';
import { readLoraAdapter } from '../../src/wire/index.js';
import { compareLogProbs, llamaCppLogProbs, logSoftmaxRows, testLlama } from './llamacpp.js';
import { bigBase, rewrite, SHAPE, syntheticExamples } from './lora-fixtures.js';

// The correctness bar of fine-tuning: the trainer's forward pass with an adapter and llama.cpp
// (node-llama-cpp 3.21.1) loading the base with the exported adapter give the same next-token
// log-probabilities. node-llama-cpp exposes probabilities, not logits, so log-probabilities are
// compared (logits up to one constant per position; see llamacpp.ts).

const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-cpp-'));
let llama: Llama;
const PROBE = (() => {
  const rng = new Rng(9);
  return Int32Array.from({ length: 48 }, () => 5 + rng.below(SHAPE.vocab - 5));
})();

beforeAll(async () => {
  llama = await testLlama();
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, bytes: Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

async function trainer(
  base: Uint8Array,
  hp: Record<string, unknown> = {},
  merged = false,
): Promise<LoraTrainer> {
  return createLoraTrainerFrom(
    readLoraBase(base),
    syntheticExamples(20, 1),
    { steps: 1, seq: 16, targets: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'], ...hp },
    3,
    { merged },
  );
}

/** Replaces the trainer's LoRA matrices (A and B) with random values of scale 0.3, through its state. */
function randomizeAdapter(t: LoraTrainer, seed: number): void {
  const state = t.saveState();
  const view = new DataView(state.buffer, state.byteOffset, state.byteLength);
  const headerEnd = Math.ceil((12 + view.getUint32(8, true)) / 4) * 4;
  const loraFloats = (state.length - headerEnd) / 12; // LoRA values, then Adam's m and v
  const rng = new Rng(seed);
  for (let i = 0; i < loraFloats; i++) view.setFloat32(headerEnd + i * 4, 0.3 * rng.normal(), true);
  t.loadState(state);
}

/** llama.cpp's log-probabilities after each token of PROBE, optionally with an adapter. */
async function llamaCpp(modelPath: string, adapterPath?: string): Promise<Float64Array[]> {
  const model = await llama.loadModel({ modelPath });
  try {
    return await llamaCppLogProbs(model, Array.from(PROBE) as Token[], SHAPE.vocab, adapterPath);
  } finally {
    await model.dispose();
  }
}

function ours(t: LoraTrainer, adapter = true): Float64Array[] {
  return logSoftmaxRows(t.logits(PROBE, { adapter }), SHAPE.vocab);
}

async function adapterFile(t: LoraTrainer, name: string): Promise<string> {
  const files = await t.exportModel();
  expect(files[0]!.name).toBe('adapter.gguf');
  return file(name, files[0]!.bytes);
}

describe('the LoRA forward pass against llama.cpp with the exported adapter', () => {
  for (const tied of [false, true]) {
    it(`gives the same log-probabilities, F32 base, grouped-query attention, ${tied ? 'tied' : 'untied'} output`, async () => {
      const bytes = tied ? rewrite(bigBase(), { tied: true }) : bigBase();
      const basePath = file(`base-${tied}.gguf`, bytes);
      const t = await trainer(bytes, { rank: 4, alpha: 8 });
      try {
        expect(t.shape.tied).toBe(tied);
        expect(t.shape.kvHeads).toBeLessThan(t.shape.heads);
        randomizeAdapter(t, 5);
        const adapterPath = await adapterFile(t, `adapter-${tied}.gguf`);
        const withAdapter = ours(t);
        const { maxDiff, spread } = compareLogProbs(withAdapter, await llamaCpp(basePath, adapterPath));
        expect(spread).toBeGreaterThan(5); // peaked distributions, not near-uniform ones
        expect(maxDiff).toBeLessThanOrEqual(1e-3);
        // The adapter changes the model a lot, and the base alone is llama.cpp's base alone.
        const base = ours(t, false);
        expect(compareLogProbs(withAdapter, base).maxDiff).toBeGreaterThan(0.5);
        expect(compareLogProbs(base, await llamaCpp(basePath)).maxDiff).toBeLessThanOrEqual(1e-3);
      } finally {
        t.dispose();
      }
    });
  }

  it('a fresh adapter (B = 0) leaves llama.cpp and the trainer at the base', async () => {
    const bytes = bigBase();
    const basePath = file('base-zero.gguf', bytes);
    const t = await trainer(bytes);
    try {
      const adapter = t.adapter();
      expect(adapter.pairs.every((p) => p.b.every((x) => x === 0))).toBe(true);
      expect(adapter.pairs.some((p) => p.a.some((x) => x !== 0))).toBe(true);
      const adapterPath = await adapterFile(t, 'adapter-zero.gguf');
      const cppBase = await llamaCpp(basePath);
      expect(compareLogProbs(await llamaCpp(basePath, adapterPath), cppBase).maxDiff).toBeLessThanOrEqual(
        1e-6,
      );
      expect(
        Buffer.from(t.logits(PROBE).buffer).equals(Buffer.from(t.logits(PROBE, { adapter: false }).buffer)),
      ).toBe(true);
      expect(compareLogProbs(ours(t), cppBase).maxDiff).toBeLessThanOrEqual(1e-3);
    } finally {
      t.dispose();
    }
  });

  it('exports the adapter in the contract layout (A [rank][in], B [out][rank]) with alpha and the architecture', async () => {
    const t = await trainer(bigBase(), { rank: 4, alpha: 8, targets: ['v', 'q'] });
    try {
      randomizeAdapter(t, 6);
      const [file] = await t.exportModel();
      const read = readLoraAdapter(file!.bytes);
      expect(read.architecture).toBe('llama');
      expect(read.alpha).toBe(8);
      expect(read.pairs.map((p) => p.target)).toEqual([
        'blk.0.attn_q.weight',
        'blk.0.attn_v.weight',
        'blk.1.attn_q.weight',
        'blk.1.attn_v.weight',
      ]);
      const v = read.pairs[1]!;
      expect([v.inputs, v.outputs, v.rank]).toEqual([32, 16, 4]); // GQA: v has kvHeads · headDim outputs
      expect(v.a.length).toBe(4 * 32);
      expect(v.b.length).toBe(16 * 4);
      const own = t.adapter().pairs[1]!;
      expect(Array.from(v.a)).toEqual(Array.from(own.a));
      expect(Array.from(v.b)).toEqual(Array.from(own.b));
    } finally {
      t.dispose();
    }
  });

  it('exports a merged model (W + scale·BA, the base metadata kept) that llama.cpp runs as base + adapter', async () => {
    const bytes = bigBase();
    const t = await trainer(bytes, { rank: 4, alpha: 8 }, true);
    try {
      randomizeAdapter(t, 7);
      const files = await t.exportModel();
      expect(files.map((f) => [f.name, f.withBase === true])).toEqual([
        ['adapter.gguf', false],
        ['model-merged.gguf', true],
      ]);
      const mergedPath = file('merged.gguf', files[1]!.bytes);
      const merged = readLoraBase(files[1]!.bytes);
      const base = readLoraBase(bytes);
      expect(merged.shape).toEqual(base.shape);
      expect(merged.info.metadata).toEqual(base.info.metadata);
      const { maxDiff, spread } = compareLogProbs(ours(t), await llamaCpp(mergedPath));
      expect(spread).toBeGreaterThan(5);
      expect(maxDiff).toBeLessThanOrEqual(1e-3);
    } finally {
      t.dispose();
    }
  });

  // llama.cpp multiplies F16 and Q8_0 matrices with activations rounded to F16 or quantised to Q8_0,
  // where the trainer runs the dequantised weights in float32: the distributions stay close (compared
  // as probabilities), the log-probabilities of very unlikely tokens less so (these weights of scale
  // 0.3 make logits span 20 nats or more).
  for (const [type, logBound, probBound] of [
    ['F16', 0.1, 2e-3],
    ['Q8_0', 3, 0.1],
  ] as const) {
    it(`runs a ${type} base (dequantised) close to llama.cpp with the adapter`, async () => {
      const bytes = rewrite(bigBase(), { type });
      const basePath = file(`base-${type}.gguf`, bytes);
      const t = await trainer(bytes, { rank: 4, alpha: 8 });
      try {
        // The weights read are the original F32 ones up to the type's rounding.
        const original = readLoraBase(bigBase()).blocks[1]!.q;
        const read = readLoraBase(bytes).blocks[1]!.q;
        const step = type === 'F16' ? 2 ** -10 : 1 / 127;
        read.forEach((x, i) => {
          if (Math.abs(x - original[i]!) > 1.5 * step)
            throw new Error(`${type} q[${i}]: ${x} vs ${original[i]}`);
        });
        randomizeAdapter(t, 8);
        const adapterPath = await adapterFile(t, `adapter-${type}.gguf`);
        const mine = ours(t);
        const theirs = await llamaCpp(basePath, adapterPath);
        const { maxDiff, spread } = compareLogProbs(mine, theirs);
        let probDiff = 0;
        mine.forEach((row, i) => {
          row.forEach((lp, v) => {
            probDiff = Math.max(probDiff, Math.abs(Math.exp(lp) - Math.exp(theirs[i]![v]!)));
          });
        });
        expect(spread).toBeGreaterThan(5);
        expect(maxDiff).toBeLessThan(logBound);
        expect(probDiff).toBeLessThan(probBound);
      } finally {
        t.dispose();
      }
    });
  }
});
