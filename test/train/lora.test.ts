import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readLoraBase } from '../../src/train/lora/base.js';
import { LoraError } from '../../src/train/lora/errors.js';
import { parseLoraHyperparameters } from '../../src/train/lora/hyperparameters.js';
import { createLoraTrainer, createLoraTrainerFrom, type LoraTrainer } from '../../src/train/lora/trainer.js';
import { GgmlType, readGgufInfo, writeGguf } from '../../src/wire/index.js';
import { bigBase, rewrite, syntheticExamples } from './lora-fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const BASE = bigBase();

function same(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  );
}

async function trainer(
  hp: Record<string, unknown>,
  seed = 4,
  examples = syntheticExamples(120, 2),
): Promise<LoraTrainer> {
  return createLoraTrainerFrom(readLoraBase(BASE), examples, hp, seed);
}

function refusal(fn: () => unknown): LoraError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(LoraError);
    return err as LoraError;
  }
  throw new Error('not refused');
}

async function asyncRefusal(p: Promise<unknown>): Promise<LoraError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LoraError);
  return err as LoraError;
}

describe('LoRA training', () => {
  it('drops the held-out completion loss clearly below the base alone', async () => {
    const t = await trainer({
      steps: 80,
      seq: 24,
      batch: 8,
      lr: 1e-2,
      targets: ['q', 'v', 'o', 'up', 'down'],
      heldOut: 0.2,
    });
    try {
      expect(t.examples).toEqual({ train: 96, heldOut: 24 });
      const before = await t.evaluate();
      // B starts at zero: the adapter is the base exactly.
      expect(before.heldout_loss).toBe(before.base_heldout_loss);
      for (let i = 0; i < 80; i++) {
        const r = await t.step();
        expect(Number.isFinite(r.loss)).toBe(true);
        expect(r.examples).toBe(8);
      }
      const after = await t.evaluate();
      expect(after.base_heldout_ppl).toBe(before.base_heldout_ppl);
      expect(after.heldout_ppl).toBeCloseTo(Math.exp(after.heldout_loss!), 6);
      expect(after.heldout_loss!).toBeLessThan(before.heldout_loss! * 0.5);
    } finally {
      t.dispose();
    }
  });

  it('resumes bit-identically from a saved state, and refuses another job’s state', async () => {
    const hp = { steps: 6, seq: 16, lr: 1e-2, targets: ['q', 'v', 'gate'] };
    const a = await trainer(hp);
    const b = await trainer(hp);
    try {
      const lossesA: number[] = [];
      for (let i = 0; i < 6; i++) lossesA.push((await a.step()).loss);
      for (let i = 0; i < 3; i++) await b.step();
      const state = b.saveState();
      b.dispose();
      const c = await trainer(hp);
      try {
        c.loadState(state);
        expect(c.completedSteps).toBe(3);
        const lossesC: number[] = [];
        for (let i = 0; i < 3; i++) lossesC.push((await c.step()).loss);
        expect(lossesC).toEqual(lossesA.slice(3));
        expect(Buffer.from(c.saveState()).equals(Buffer.from(a.saveState()))).toBe(true);
        const probe = Int32Array.from([5, 50, 60, 70, 80]);
        expect(same(c.logits(probe), a.logits(probe))).toBe(true);
      } finally {
        c.dispose();
      }
      // Another seed, other hyperparameters or another base: refused, one line.
      const other = await trainer(hp, 5);
      const otherHp = await trainer({ ...hp, rank: 4 });
      const otherBase = await createLoraTrainerFrom(
        readLoraBase(rewrite(BASE, { tied: true })),
        syntheticExamples(120, 2),
        hp,
        4,
      );
      try {
        for (const t of [other, otherHp, otherBase]) {
          const err = refusal(() => t.loadState(state));
          expect(err.code).toBe('checkpoint-state');
          expect(err.message).toMatch(/^the saved state cannot resume this LoRA job: .+$/);
        }
        expect(refusal(() => other.loadState(new Uint8Array(10))).message).toMatch(
          /not a LoRA trainer state/,
        );
      } finally {
        other.dispose();
        otherHp.dispose();
        otherBase.dispose();
      }
    } finally {
      a.dispose();
    }
  });
});

describe('refusals', () => {
  it('refuses bad hyperparameters, naming the field', () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{}, /^hyperparameters\.steps is required$/],
      [{ steps: 1, rank: 0 }, /^hyperparameters\.rank must be between 1 and 1024, got 0$/],
      [{ steps: 1, alpha: 0 }, /^hyperparameters\.alpha must be above 0/],
      [{ steps: 1, targets: ['q', 'lm_head'] }, /^hyperparameters\.targets has "lm_head", not a projection/],
      [{ steps: 1, targets: [] }, /^hyperparameters\.targets must be a non-empty list/],
      [{ steps: 1, targets: ['q', 'q'] }, /^hyperparameters\.targets names a projection twice/],
      [{ steps: 1, heldOut: 0.7 }, /^hyperparameters\.heldOut must be at least 0 and at most 0\.5/],
      [{ steps: 1, lr: 0 }, /^hyperparameters\.lr must be above 0/],
      [{ steps: 1, schedule: 'linear' }, /^hyperparameters\.schedule must be "cosine" or "constant"/],
      [{ steps: 1, seq: 1 }, /^hyperparameters\.seq must be between 2/],
      [
        { steps: 1, learningRate: 1e-3 },
        /^hyperparameters\.learningRate is not a LoRA trainer hyperparameter/,
      ],
    ];
    for (const [raw, message] of cases) {
      const err = refusal(() => parseLoraHyperparameters(raw));
      expect(err.code).toBe('bad-hyperparameter');
      expect(err.message).toMatch(message);
    }
    expect(parseLoraHyperparameters({ steps: 10, targets: ['v', 'q'] })).toMatchObject({
      batch: 4,
      seq: 64,
      rank: 8,
      alpha: 16,
      targets: ['q', 'v'],
      heldOut: 0.1,
    });
  });

  it('refuses a base of another architecture, an unread quantisation or a tensor it does not run, in one line', () => {
    const renamed = new TextDecoder('latin1')
      .decode(BASE)
      .replace(
        '\u0005\u0000\u0000\u0000\u0000\u0000\u0000\u0000llama',
        '\u0005\u0000\u0000\u0000\u0000\u0000\u0000\u0000qwen2',
      );
    const qwen = Uint8Array.from(renamed, (c) => c.charCodeAt(0));
    expect(readGgufInfo(qwen).architecture).toBe('qwen2');
    const arch = refusal(() => readLoraBase(qwen));
    expect(arch.code).toBe('bad-model');
    expect(arch.message).toBe('the base model has architecture "qwen2"; the LoRA trainer runs "llama"');

    // A Q4_1 tensor (type 3, blocks of 32 like the 32-wide rows here): the type patched in a copy.
    const info = readGgufInfo(BASE);
    const q = info.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!;
    expect(q.ggmlType).toBe(GgmlType.F32);
    const err = refusal(() => readLoraBase(withTensorType(BASE, 'blk.0.attn_q.weight', 3)));
    expect(err.code).toBe('bad-model');
    expect(err.message).toMatch(
      /^the base model tensor blk\.0\.attn_q\.weight is Q4_1; the LoRA trainer reads F32, F16, BF16, Q8_0, Q4_0 \(Q8_0 and Q4_0 dequantised\)$/,
    );

    expect(refusal(() => readLoraBase(new Uint8Array(12))).message).toMatch(
      /^the base model is not a readable GGUF file/,
    );
  });

  it('refuses a base whose block count its tensors cannot back, at once (no allocation for 4 billion layers)', () => {
    const forged = writeGguf(
      [
        ['general.architecture', { type: 'string', value: 'llama' }],
        ['llama.embedding_length', { type: 'u32', value: 8 }],
        ['llama.block_count', { type: 'u32', value: 0xffffffff }],
        ['llama.feed_forward_length', { type: 'u32', value: 16 }],
        ['llama.attention.head_count', { type: 'u32', value: 2 }],
        ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: 1e-5 }],
      ],
      [
        { name: 'token_embd.weight', dims: [8, 4], type: 'F32', data: new Float32Array(32) },
        { name: 'output_norm.weight', dims: [8], type: 'F32', data: new Float32Array(8) },
      ],
    );
    expect(refusal(() => readLoraBase(forged)).message).toMatch(
      /llama\.block_count 4294967295, not a count from 1 to 1/,
    );
  });

  it('refuses input without a base, without a dataset, or with token ids outside the vocabulary', async () => {
    const basePath = join(dir, 'base.gguf');
    writeFileSync(basePath, BASE);
    const noBase = await asyncRefusal(
      createLoraTrainer({ inputs: [], hyperparameters: { steps: 1 }, seed: 1 }),
    );
    expect(noBase.code).toBe('bad-input');
    const noData = await asyncRefusal(
      createLoraTrainer({
        inputs: [],
        base: { name: 'base', path: basePath },
        hyperparameters: { steps: 1 },
        seed: 1,
      }),
    );
    expect(noData.message).toMatch(/needs a chat dataset as inputs\[0\]/);
    const badToken = await asyncRefusal(
      createLoraTrainerFrom(
        readLoraBase(BASE),
        [{ tokens: Int32Array.from([1, 999]), completion: Uint8Array.from([0, 1]) }],
        { steps: 1 },
        1,
      ),
    );
    expect(badToken.message).toBe("example 1 has token id 999, outside the base's vocabulary of 356");
    const nothing = await asyncRefusal(
      createLoraTrainerFrom(
        readLoraBase(BASE),
        [{ tokens: Int32Array.from([1, 2]), completion: Uint8Array.from([0, 0]) }],
        { steps: 1 },
        1,
      ),
    );
    expect(nothing.message).toMatch(/no example with a completion token/);
  });
});

/** A copy of a GGUF with one tensor's ggml type id changed (its data then reads as garbage, unread). */
function withTensorType(bytes: Uint8Array, name: string, type: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  const nameBytes = new TextEncoder().encode(name);
  for (let i = 0; i < out.length - nameBytes.length; i++) {
    if (nameBytes.every((b, j) => out[i + j] === b) && out[i - 8] === nameBytes.length) {
      const o = i + nameBytes.length + 4 + 8 * 2; // n_dims, two dims
      new DataView(out.buffer).setUint32(o, type, true);
      return out;
    }
  }
  throw new Error(`no tensor ${name}`);
}
