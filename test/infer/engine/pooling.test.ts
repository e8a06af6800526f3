import { describe, expect, it } from 'vitest';
import { poolAndNormalise } from '../../../src/infer/engine/pooling.js';

const PAD = 1e6;

describe('poolAndNormalise', () => {
  // Two rows, 3 positions, 2 dims; row 0 has 2 real tokens, row 1 has 3. Padding holds huge values
  // so that any leak into the mean shows.
  const out = Float32Array.from([3, 0, 1, 4, PAD, PAD, 1, 1, 2, 2, 3, 3]);

  it('averages the real tokens of each row and normalises', () => {
    const v = poolAndNormalise(out, [2, 3, 2], [2, 3], 'mean');
    // Row 0: mean (2, 2) → (1/√2, 1/√2); row 1: mean (2, 2) likewise.
    for (const x of v) expect(x).toBeCloseTo(Math.SQRT1_2, 6);
  });

  it('takes the first token for CLS pooling', () => {
    const v = poolAndNormalise(out, [2, 3, 2], [2, 3], 'cls');
    expect(Array.from(v)).toEqual([1, 0, Math.fround(Math.SQRT1_2), Math.fround(Math.SQRT1_2)]);
  });

  it('only normalises an output the model has pooled itself', () => {
    const v = poolAndNormalise(Float32Array.from([3, 4, 0, -2]), [2, 2], [5, 9], 'mean');
    expect(Array.from(v)).toEqual([Math.fround(0.6), Math.fround(0.8), 0, -1]);
  });

  it('leaves a zero vector zero instead of dividing by zero', () => {
    expect(Array.from(poolAndNormalise(new Float32Array(2), [1, 2], [1], 'mean'))).toEqual([0, 0]);
  });

  it('refuses shapes and lengths that do not fit', () => {
    expect(() => poolAndNormalise(out, [12], [1], 'mean')).toThrow(/\[batch, dim\]/);
    expect(() => poolAndNormalise(out, [3, 2, 2], [1, 1], 'mean')).toThrow(/3 rows for a batch of 2/);
    expect(() => poolAndNormalise(out, [2, 3, 3], [1, 1], 'mean')).toThrow(/12 values/);
    expect(() => poolAndNormalise(out, [2, 3, 2], [0, 3], 'mean')).toThrow(/row 0 has 0 tokens/);
    expect(() => poolAndNormalise(out, [2, 3, 2], [2, 4], 'mean')).toThrow(/row 1 has 4 tokens/);
    expect(() => poolAndNormalise(Float32Array.from([Number.NaN, 1]), [1, 2], [1], 'mean')).toThrow(
      /not finite/,
    );
  });
});
