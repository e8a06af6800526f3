import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Llama, Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadLlamaEngine } from '../../src/infer/engine/llama.js';
import {
  createLlamaTrainer,
  decode,
  encode,
  encodeCorpus,
  LlamaError,
  type LlamaTrainer,
  readLlamaGguf,
  writeLlamaGguf,
} from '../../src/train/llama/index.js';
import { paramSpecs } from '../../src/train/llama/model.js';
import { Rng } from '../../src/util/prng.js';
import { floatToHalf } from '../../src/wire/gguf-tensors.js';
import { compareLogProbs, llamaCppLogProbs, logSoftmaxRows, testLlama } from './llamacpp.js';

// The exported GGUF must be the trained model as llama.cpp sees it: same tokens for the same text,
// same next-token distribution at every position. node-llama-cpp exposes probabilities (a softmax of
// llama.cpp's logits), not raw logits, so log-probabilities are compared: log-softmax is the logits
// up to one additive constant per position, which is all a language model's output means.

const dir = mkdtempSync(join(tmpdir(), 'cloister-train-llama-'));
const corpusPath = join(dir, 'corpus.txt');
const CORPUS =
  'The quick brown fox jumps over the lazy dog. '.repeat(40) +
  'Hello, world!\nÜber naïve café, 你好.\t(tabs) and "quotes"; done? '.repeat(20);
const PROBE = 'The quick brown fox, hello!\nÜber naïve café… 你好 "ok"? The end of a longer probe.';

let llama: Llama;

beforeAll(async () => {
  writeFileSync(corpusPath, CORPUS);
  llama = await testLlama();
});
afterAll(async () => {
  await llama?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** Equality of float arrays, bit for bit, without vitest's element-by-element diff. */
function sameFloats(a: Float32Array[], b: Float32Array[]): boolean {
  return (
    a.length === b.length &&
    a.every((x, i) =>
      Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(
        Buffer.from(b[i]!.buffer, b[i]!.byteOffset, b[i]!.byteLength),
      ),
    )
  );
}

async function trainer(hyperparameters: Record<string, unknown>, seed = 5): Promise<LlamaTrainer> {
  return createLlamaTrainer({ inputs: [{ name: 'corpus', path: corpusPath }], hyperparameters, seed });
}

async function exportTo(t: LlamaTrainer, name: string): Promise<string> {
  const [file] = await t.exportModel();
  expect(file!.name).toBe('model.gguf');
  const path = join(dir, name);
  writeFileSync(path, file!.bytes);
  return path;
}

/** Our log-probabilities of PROBE against llama.cpp's on `modelPath` (default: the trainer's export). */
async function compare(
  t: LlamaTrainer,
  name: string,
  modelPath?: string,
): Promise<{ maxDiff: number; spread: number }> {
  const path = modelPath ?? (await exportTo(t, name));
  const model = await llama.loadModel({ modelPath: path });
  try {
    const tokens = Array.from(encode(PROBE)) as Token[];
    const ours = logSoftmaxRows(t.logits(Int32Array.from(tokens)), t.shape.vocab);
    return compareLogProbs(ours, await llamaCppLogProbs(model, tokens, t.shape.vocab));
  } finally {
    await model.dispose();
  }
}

describe('the exported GGUF in llama.cpp (node-llama-cpp)', () => {
  it('gives the same next-token log-probabilities as the trainer, random init, grouped-query attention', async () => {
    const t = await trainer({ steps: 1, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 48, seq: 16 });
    try {
      const { maxDiff } = await compare(t, 'gqa.gguf');
      expect(maxDiff).toBeLessThanOrEqual(1e-3);
    } finally {
      t.dispose();
    }
  });

  it('gives the same log-probabilities for large random weights (attention far from uniform), grouped-query', async () => {
    // A fresh model's 0.02-scale weights make every attention score nearly 0, which would hide a wrong
    // RoPE or head grouping: weights of scale 0.3 give peaked attention that depends on position.
    const shape = { vocab: 356, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 40 };
    const rng = new Rng(123);
    const params = paramSpecs(shape).map((spec) =>
      Float32Array.from({ length: spec.shape.reduce((a, b) => a * b, 1) }, () =>
        spec.init === 'ones' ? 1 + 0.2 * rng.normal() : 0.3 * rng.normal(),
      ),
    );
    const path = join(dir, 'big.gguf');
    writeFileSync(path, writeLlamaGguf({ shape, context: 256, params, name: 'big' }));
    const t = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: corpusPath }],
      startModel: { name: 'big.gguf', path },
      hyperparameters: { steps: 1, seq: 16 },
      seed: 1,
    });
    try {
      const { maxDiff, spread } = await compare(t, 'big-out.gguf');
      expect(spread).toBeGreaterThan(5);
      expect(maxDiff).toBeLessThanOrEqual(1e-3);
    } finally {
      t.dispose();
    }
  });

  it('gives the same next-token log-probabilities after training (multi-head, positions beyond seq)', async () => {
    const t = await trainer({
      steps: 60,
      dim: 32,
      layers: 1,
      heads: 2,
      seq: 32,
      batch: 4,
      lr: 1e-2,
      schedule: 'constant',
    });
    try {
      for (let i = 0; i < 60; i++) await t.step();
      const { maxDiff, spread } = await compare(t, 'trained.gguf');
      // A trained model is far from uniform: the check compares real, peaked distributions.
      expect(spread).toBeGreaterThan(5);
      expect(maxDiff).toBeLessThanOrEqual(1e-3);
    } finally {
      t.dispose();
    }
  });

  it('tokenizes and detokenizes every text as the trainer does', async () => {
    const t = await trainer({ steps: 1, dim: 16, layers: 1, heads: 2, seq: 8 });
    const path = await exportTo(t, 'tok.gguf');
    t.dispose();
    const model = await llama.loadModel({ modelPath: path });
    try {
      const texts = [
        'Hello, world!',
        ' leading space, two  spaces, trailing ',
        'line one\nline two\r\n\ttabbed',
        'punctuation: !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~',
        'Über naïve café — 你好 🎉',
        '<s></s><unk><|im_start|>user<|im_end|> read as text',
        '▁ the escape character itself',
        'x',
      ];
      for (const text of texts) {
        const ids = encode(text);
        expect(Array.from(model.tokenize(text)), text).toEqual(Array.from(ids));
        expect(model.detokenize(Array.from(ids) as Token[]), text).toBe(decode(ids));
        expect(decode(ids)).toBe(text.replaceAll('▁', ' '));
      }
      // A training corpus reads the ChatML markers as llama.cpp does with special tokens parsed.
      for (const text of [
        '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>',
        'plain',
      ]) {
        expect(Array.from(model.tokenize(text, true)), text).toEqual(Array.from(encodeCorpus(text)));
      }
    } finally {
      await model.dispose();
    }
  });

  it('serves through cloister infer with the ChatML template', async () => {
    const t = await trainer({ steps: 1, dim: 16, layers: 1, heads: 2, seq: 8 });
    const path = await exportTo(t, 'serve.gguf');
    t.dispose();
    const engine = await loadLlamaEngine({ path, gpu: false, threads: 1 });
    try {
      expect(engine.contextLength).toBeGreaterThanOrEqual(512);
      const r = await engine.chat(
        [{ role: 'user', content: 'hi' }],
        { maxTokens: 8, temperature: 0, topP: 1, stop: [], signal: new AbortController().signal },
        () => {},
      );
      expect(r.completionTokens).toBeGreaterThan(0);
    } finally {
      await engine.close();
    }
  });
});

describe('readLlamaGguf and continuing from a model', () => {
  it('reads back exactly the weights it wrote, and a new job starts from them', async () => {
    const t = await trainer({ steps: 3, dim: 16, layers: 1, heads: 4, kvHeads: 2, ffn: 24, seq: 8 });
    for (let i = 0; i < 3; i++) await t.step();
    const path = await exportTo(t, 'start.gguf');
    const [file] = await t.exportModel();
    const model = readLlamaGguf(file!.bytes);
    expect(model.shape).toEqual(t.shape);
    expect(sameFloats(model.params, t.weights())).toBe(true);
    const next = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: corpusPath }],
      startModel: { name: 'start.gguf', path },
      hyperparameters: { steps: 5, seq: 8 }, // the shape comes from the model
      seed: 99,
    });
    expect(next.shape).toEqual(t.shape);
    expect(sameFloats(next.weights(), t.weights())).toBe(true);
    expect(next.completedSteps).toBe(0);
    await next.step();
    next.dispose();
    t.dispose();

    const clash = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: corpusPath }],
      startModel: { name: 'start.gguf', path },
      hyperparameters: { steps: 5, dim: 32 },
      seed: 1,
    }).catch((e: unknown) => e);
    expect(clash).toBeInstanceOf(LlamaError);
    expect((clash as LlamaError).code).toBe('bad-hyperparameter');
    expect((clash as LlamaError).message).toMatch(
      /hyperparameters\.dim is 32, but the starting model has 16/,
    );
  });

  it('reads an F16 file (dequantised), which llama.cpp runs with nearly the same log-probabilities', async () => {
    const t = await trainer({ steps: 30, dim: 32, layers: 1, heads: 4, kvHeads: 2, seq: 16, lr: 1e-2 });
    for (let i = 0; i < 30; i++) await t.step();
    const weights = t.weights();
    const path = join(dir, 'half.gguf');
    writeFileSync(
      path,
      writeLlamaGguf({ shape: t.shape, context: 256, params: weights, name: 'half' }, { type: 'F16' }),
    );
    t.dispose();
    const half = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: corpusPath }],
      startModel: { name: 'half.gguf', path },
      hyperparameters: { steps: 1, seq: 16 },
      seed: 1,
    });
    try {
      const read = half.weights();
      read.forEach((a, i) => {
        const w = weights[i]!;
        const is2d = paramSpecs(t.shape)[i]!.shape.length === 2;
        for (let j = 0; j < a.length; j++) {
          // F16 keeps 11 significant bits; norm weights stay F32.
          const tol = is2d ? Math.abs(w[j]!) * 2 ** -11 + 2 ** -25 : 0;
          if (Math.abs(a[j]! - w[j]!) > tol) throw new Error(`tensor ${i}[${j}]: ${a[j]} vs ${w[j]}`);
        }
      });
      // llama.cpp also rounds activations to F16 before F16 matrix products, hence the looser bound.
      const { maxDiff } = await compare(half, 'half-out.gguf', path);
      expect(maxDiff).toBeLessThan(5e-3);
    } finally {
      half.dispose();
    }
  });

  it('rounds floats to F16 to nearest even', () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [-0, 0x8000],
      [65504, 0x7bff],
      [65520, 0x7c00],
      [Infinity, 0x7c00],
      [2 ** -24, 0x0001],
      [2 ** -25, 0x0000],
      [1.5 * 2 ** -25, 0x0001],
      [2 ** -14, 0x0400],
      [1 + 2 ** -11, 0x3c00],
      [1 + 3 * 2 ** -11, 0x3c02],
    ];
    for (const [f, h] of cases) expect(floatToHalf(f), String(f)).toBe(h);
    expect(floatToHalf(Number.NaN) & 0x7e00).toBe(0x7e00);
  });

  it('refuses a file that is not one of its models', async () => {
    const junk = join(dir, 'junk.gguf');
    writeFileSync(junk, 'not a gguf at all');
    const err = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: corpusPath }],
      startModel: { name: 'junk.gguf', path: junk },
      hyperparameters: { steps: 1 },
      seed: 1,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LlamaError);
    expect((err as LlamaError).code).toBe('bad-model');
    expect(() => readLlamaGguf(new Uint8Array(3))).toThrow(/not a readable GGUF/);
  });
});
