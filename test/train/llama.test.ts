import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { initEngine } from '../../src/train/engine.js';
import { learningRate, parseHyperparameters } from '../../src/train/llama/hyperparameters.js';
import {
  createLlamaTrainer,
  LlamaError,
  type LlamaErrorCode,
  type LlamaTrainer,
} from '../../src/train/llama/index.js';
import { Rng } from '../../src/util/prng.js';

const dir = mkdtempSync(join(tmpdir(), 'cloister-train-llama-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const corpus = file(
  'corpus.txt',
  [
    'the cat sat on the mat. the dog sat on the log. ',
    'a cat and a dog sat on a mat and a log. ',
    'the mat is red and the log is brown. ',
  ]
    .join('')
    .repeat(30),
);

// Tiny shapes keep each test to a few seconds on a busy two-core machine.
const TINY = { dim: 32, layers: 1, heads: 2, seq: 16, batch: 4 };

function make(hyperparameters: Record<string, unknown>, seed = 42, path = corpus): Promise<LlamaTrainer> {
  return createLlamaTrainer({ inputs: [{ name: 'corpus', path }], hyperparameters, seed });
}

/** Byte equality without vitest's element-by-element diff (slow on arrays of 10^5 elements). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  );
}

async function steps(t: LlamaTrainer, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await t.step();
}

async function refusal(p: Promise<unknown> | (() => unknown)): Promise<LlamaError> {
  const err =
    typeof p === 'function'
      ? (() => {
          try {
            p();
          } catch (e) {
            return e;
          }
        })()
      : await p.then(
          () => undefined,
          (e: unknown) => e,
        );
  expect(err).toBeInstanceOf(LlamaError);
  return err as LlamaError;
}

describe('initEngine', () => {
  it('starts the engine once, however often it is called', async () => {
    const a = initEngine();
    expect(initEngine()).toBe(a);
    await a;
  });
});

describe('learning-rate schedule and random numbers', () => {
  it('warms up linearly, then decays by cosine to lr/10, or stays constant', () => {
    const cosine = parseHyperparameters({ steps: 110, lr: 0.01, warmup: 10 });
    expect(learningRate(cosine, 1)).toBeCloseTo(0.001, 12);
    expect(learningRate(cosine, 10)).toBeCloseTo(0.01, 12);
    expect(learningRate(cosine, 60)).toBeCloseTo(0.0055, 12);
    expect(learningRate(cosine, 110)).toBeCloseTo(0.001, 12);
    expect(learningRate(cosine, 500)).toBeCloseTo(0.001, 12); // past the end: stays at the floor
    const constant = parseHyperparameters({ steps: 100, lr: 0.01, schedule: 'constant' });
    expect(constant.warmup).toBe(0);
    expect(learningRate(constant, 1)).toBe(0.01);
    expect(learningRate(constant, 100)).toBe(0.01);
  });

  it('draws the same numbers for the same seed and stream, and normals with mean 0 and variance 1', () => {
    const a = new Rng(2 ** 40 + 3, 1, 2);
    const b = new Rng(2 ** 40 + 3, 1, 2);
    const c = new Rng(2 ** 40 + 3, 1, 3);
    const xs = Array.from({ length: 20_000 }, () => a.normal());
    expect(xs.slice(0, 5)).toEqual(Array.from({ length: 5 }, () => b.normal()));
    expect(c.normal()).not.toBe(xs[0]);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    const variance = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / xs.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
  });
});

describe('llama trainer', () => {
  it('lowers the held-out loss and reports tokens per step', async () => {
    const t = await make({ ...TINY, steps: 80, lr: 1e-2, warmup: 5 });
    try {
      expect(t.name).toBe('llama');
      expect(t.totalSteps).toBe(80);
      expect(t.corpusTokens.heldOut).toBeGreaterThan(0);
      const before = (await t.evaluate()).heldout_loss!;
      expect(before).toBeGreaterThan(5); // about ln(356) for a fresh model
      const first = await t.step();
      expect(first).toMatchObject({ step: 1, examples: 4, tokens: 64 });
      expect(Number.isFinite(first.loss)).toBe(true);
      await steps(t, 79);
      expect(t.completedSteps).toBe(80);
      const after = (await t.evaluate()).heldout_loss!;
      expect(after).toBeLessThan(before - 2);
      // evaluate does not change the state
      expect((await t.evaluate()).heldout_loss).toBe(after);
    } finally {
      t.dispose();
    }
  });

  it('is deterministic: the same seed gives the same state bytes, another seed another state', async () => {
    const a = await make({ ...TINY, steps: 10 });
    const b = await make({ ...TINY, steps: 10 });
    const c = await make({ ...TINY, steps: 10 }, 43);
    try {
      await steps(a, 4);
      await steps(b, 4);
      await steps(c, 4);
      expect(same(a.saveState(), b.saveState())).toBe(true);
      expect(same(a.saveState(), c.saveState())).toBe(false);
    } finally {
      a.dispose();
      b.dispose();
      c.dispose();
    }
  });

  it('resumes bit-identically: 2k steps straight equal k, save, load into a new trainer, k more', async () => {
    const hp = { ...TINY, steps: 8, kvHeads: 1, warmup: 2 };
    const straight = await make(hp);
    const first = await make(hp);
    try {
      await steps(straight, 8);
      await steps(first, 4);
      const saved = first.saveState();
      const second = await make(hp);
      try {
        second.loadState(saved);
        expect(second.completedSteps).toBe(4);
        expect(same(second.saveState(), saved)).toBe(true);
        await steps(second, 4);
        expect(second.completedSteps).toBe(8);
        expect(same(second.saveState(), straight.saveState())).toBe(true);
        expect(await second.evaluate()).toEqual(await straight.evaluate());
        const [a] = await second.exportModel();
        const [b] = await straight.exportModel();
        expect(same(a!.bytes, b!.bytes)).toBe(true);
      } finally {
        second.dispose();
      }
    } finally {
      straight.dispose();
      first.dispose();
    }
  });

  it('refuses a state of another seed, shape or trainer, and damaged state bytes', async () => {
    const t = await make({ ...TINY, steps: 4 });
    const otherSeed = await make({ ...TINY, steps: 4 }, 7);
    const otherLr = await make({ ...TINY, steps: 4, lr: 1e-3 });
    const otherShape = await make({ ...TINY, steps: 4, dim: 16 });
    try {
      const expectRefused = async (state: Uint8Array, pattern: RegExp): Promise<void> => {
        const err = await refusal(() => t.loadState(state));
        expect(err.code satisfies LlamaErrorCode).toBe('checkpoint-state');
        expect(err.message).toMatch(pattern);
      };
      await expectRefused(otherSeed.saveState(), /other hyperparameters or another seed/);
      await expectRefused(otherLr.saveState(), /other hyperparameters or another seed/);
      await expectRefused(otherShape.saveState(), /model shape/);
      await expectRefused(new TextEncoder().encode('{"trainer":"mlp"}'), /not a llama trainer state/);
      const good = t.saveState();
      await expectRefused(good.subarray(0, good.length - 4), /bytes/);
      const foreign = good.slice();
      const header = new TextEncoder().encode('"trainer":"llama"');
      const at = Buffer.from(foreign).indexOf(Buffer.from(header));
      foreign.set(new TextEncoder().encode('"trainer":"mlpxx"'), at);
      await expectRefused(foreign, /belongs to the "mlpxx" trainer/);
      t.loadState(good); // its own state still loads
    } finally {
      for (const x of [t, otherSeed, otherLr, otherShape]) x.dispose();
    }
  });

  it('names the field of a bad hyperparameter', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{}, /hyperparameters\.steps is required/],
      [{ steps: 0 }, /hyperparameters\.steps must be between 1/],
      [{ steps: 1.5 }, /hyperparameters\.steps must be an integer/],
      [{ steps: '10' }, /hyperparameters\.steps must be an integer/],
      [{ steps: 10, batch: 0 }, /hyperparameters\.batch/],
      [{ steps: 10, seq: 1 }, /hyperparameters\.seq/],
      [
        { steps: 10, dim: 30, heads: 4 },
        /hyperparameters\.heads \(4\) must divide hyperparameters\.dim \(30\)/,
      ],
      [{ steps: 10, dim: 12, heads: 4 }, /hyperparameters\.heads must leave an even head size/],
      [{ steps: 10, heads: 4, kvHeads: 3 }, /hyperparameters\.kvHeads \(3\) must divide/],
      [{ steps: 10, heads: 4, kvHeads: 8 }, /hyperparameters\.kvHeads must be between 1 and 4/],
      [{ steps: 10, lr: 0 }, /hyperparameters\.lr must be above 0/],
      [{ steps: 10, lr: Number.NaN }, /hyperparameters\.lr must be a number/],
      [{ steps: 10, schedule: 'linear' }, /hyperparameters\.schedule must be "cosine" or "constant"/],
      [{ steps: 10, warmup: 11 }, /hyperparameters\.warmup must be between 0 and 10/],
      [{ steps: 10, heldOut: 0.9 }, /hyperparameters\.heldOut/],
      [{ steps: 10, weightDecay: -1 }, /hyperparameters\.weightDecay/],
      [{ steps: 10, seq: 64, context: 32 }, /hyperparameters\.context must be between 64/],
      [
        { steps: 10, learningRate: 0.1 },
        /hyperparameters\.learningRate is not a llama trainer hyperparameter/,
      ],
    ];
    for (const [hp, pattern] of cases) {
      const err = await refusal(make(hp));
      expect(err.code, JSON.stringify(hp)).toBe('bad-hyperparameter');
      expect(err.message, JSON.stringify(hp)).toMatch(pattern);
    }
    const seed = await refusal(make({ steps: 1 }, 0.5));
    expect(seed.message).toMatch(/seed must be an integer/);
  });

  it('refuses an empty, non-UTF-8 or too short corpus, and a missing or extra input', async () => {
    const cases: [string, RegExp][] = [
      [file('empty.txt', ''), /inputs\[0\] \(corpus\) is empty/],
      [file('short.txt', 'tiny'), /fewer than hyperparameters\.seq \+ 1 = 17/],
      [file('heldout.txt', 'x'.repeat(100)), /hyperparameters\.heldOut = 0\.1 holds out 10/],
    ];
    writeFileSync(join(dir, 'latin1.txt'), Uint8Array.of(0x63, 0x61, 0x66, 0xe9));
    cases.push([join(dir, 'latin1.txt'), /is not UTF-8 text/]);
    for (const [path, pattern] of cases) {
      const err = await refusal(make({ ...TINY, steps: 1 }, 1, path));
      expect(err.code).toBe('bad-input');
      expect(err.message).toMatch(pattern);
    }
    const none = await refusal(createLlamaTrainer({ inputs: [], hyperparameters: { steps: 1 }, seed: 1 }));
    expect(none.message).toMatch(/needs a text corpus as inputs\[0\]/);
    const two = await refusal(
      createLlamaTrainer({
        inputs: [
          { name: 'a', path: corpus },
          { name: 'b', path: corpus },
        ],
        hyperparameters: { steps: 1 },
        seed: 1,
      }),
    );
    expect(two.message).toMatch(/inputs\[1\] \(b\) is one too many/);
    // heldOut 0 trains on all of a short corpus and has nothing to evaluate
    const all = await make({ ...TINY, steps: 1, heldOut: 0 }, 1, file('short2.txt', 'x'.repeat(40)));
    expect(await all.evaluate()).toEqual({});
    all.dispose();
  });
});
