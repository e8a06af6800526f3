import { describe, expect, it } from 'vitest';
import {
  clipL2,
  dpSum,
  FederatedError,
  privacyEpsilon,
  rdpSampledGaussian,
} from '../../src/federated/index.js';

function refuses(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(FederatedError);
    expect((e as FederatedError).code).toBe(code);
    expect((e as FederatedError).message).not.toContain('\n');
    return;
  }
  throw new Error(`expected a refusal with code ${code}`);
}

const norm = (v: Float64Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

describe('clipping and noise', () => {
  it('clips a long update to norm C and leaves a short one alone', () => {
    const long = clipL2(Float32Array.from([3, 4]), 1);
    expect(long.norm).toBe(5);
    expect(long.clipped).toBe(true);
    expect(norm(long.vector)).toBeCloseTo(1, 12);
    expect(long.vector[0]).toBeCloseTo(0.6, 7);
    const short = clipL2(Float64Array.from([0.3, 0.4]), 1);
    expect(short.clipped).toBe(false);
    expect(Array.from(short.vector)).toEqual([0.3, 0.4]);
  });

  it('without noise, the sum is the sum of the clipped updates (one client moves it by at most C)', () => {
    const { sum, clipped, sigma } = dpSum([Float32Array.from([30, 40]), Float32Array.from([0.1, 0.1])], {
      clipNorm: 2,
      noiseMultiplier: 0,
      seed: 1,
    });
    expect(sigma).toBe(0);
    expect(clipped).toBe(1);
    expect(sum[0]).toBeCloseTo(1.2 + 0.1, 6);
    expect(sum[1]).toBeCloseTo(1.6 + 0.1, 6);
  });

  it('adds N(0, (z·C)²) noise: deterministic per (seed, round), fresh per round, right spread', () => {
    const zeros = [new Float64Array(20_000)];
    const opts = { clipNorm: 0.5, noiseMultiplier: 2, seed: 42, round: 3 };
    const a = dpSum(zeros, opts).sum;
    const b = dpSum(zeros, opts).sum;
    expect(Array.from(a)).toEqual(Array.from(b));
    const other = dpSum(zeros, { ...opts, round: 4 }).sum;
    expect(other[0]).not.toBe(a[0]);
    const mu = a.reduce((s, x) => s + x, 0) / a.length;
    const sd = Math.sqrt(a.reduce((s, x) => s + (x - mu) ** 2, 0) / a.length);
    // σ = z·C = 1; with 20,000 draws the sample spread is within ±3% and the mean within ±0.03.
    expect(Math.abs(sd - 1)).toBeLessThan(0.03);
    expect(Math.abs(mu)).toBeLessThan(0.03);
  });

  it('refuses bad settings and bad updates', () => {
    const u = [Float32Array.from([1])];
    refuses(() => dpSum(u, { clipNorm: 0, noiseMultiplier: 1, seed: 1 }), 'bad-parameter');
    refuses(() => dpSum(u, { clipNorm: 1, noiseMultiplier: -1, seed: 1 }), 'bad-parameter');
    refuses(() => dpSum(u, { clipNorm: 1, noiseMultiplier: 1, seed: 0.5 }), 'bad-parameter');
    refuses(() => dpSum(u, { clipNorm: 1, noiseMultiplier: 1, seed: 1, round: -1 }), 'bad-parameter');
    refuses(
      () => dpSum([Float32Array.from([Number.NaN])], { clipNorm: 1, noiseMultiplier: 1, seed: 1 }),
      'non-finite',
    );
    refuses(() => dpSum([], { clipNorm: 1, noiseMultiplier: 1, seed: 1 }), 'no-updates');
    refuses(
      () =>
        dpSum([Float32Array.from([1]), Float32Array.from([1, 2])], {
          clipNorm: 1,
          noiseMultiplier: 1,
          seed: 1,
        }),
      'length-mismatch',
    );
    refuses(() => clipL2(Float32Array.from([1]), Number.POSITIVE_INFINITY), 'bad-parameter');
  });
});

describe('RDP accountant', () => {
  it('q = 1: RDP is α/(2z²) and ε at the optimal order is the closed form T/(2z²) + 2√(T·log(1/δ)/(2z²))', () => {
    expect(rdpSampledGaussian(1, 10, 20)).toBe(0.1);
    // z = 1, T = 1, δ = 1e-5: c = 1/2, L = ln 1e5; α* = 1 + √(L/c), ε = c + 2√(cL) = 5.29853.
    const L = Math.log(1e5);
    const alphaStar = 1 + Math.sqrt(2 * L);
    const exact = privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 1e-5, orders: [alphaStar] });
    expect(exact.epsilon).toBeCloseTo(0.5 + 2 * Math.sqrt(0.5 * L), 12);
    expect(exact.epsilon).toBeCloseTo(5.298526, 5);
    // The default grid misses α* = 5.80 by a little: at most 0.1% above the closed form.
    const grid = privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 1e-5 });
    expect(grid.epsilon).toBeGreaterThanOrEqual(exact.epsilon);
    expect(grid.epsilon / exact.epsilon).toBeLessThan(1.001);
    expect(grid.order).toBe(6);
  });

  it('q < 1 matches TF-Privacy rdp_accountant_test (compute_rdp values)', () => {
    // compute_rdp(q=0.1, σ=2, steps=10, order=5) = 0.07737.
    expect(10 * rdpSampledGaussian(0.1, 2, 5)).toBeCloseTo(0.07737, 5);
    // compute_rdp(q=0.01, σ=2.5, steps=50, orders 5, 50, 100) = 0.00218075, 0.023846, 167.416307.
    expect(50 * rdpSampledGaussian(0.01, 2.5, 5)).toBeCloseTo(0.00218075, 7);
    expect(50 * rdpSampledGaussian(0.01, 2.5, 50)).toBeCloseTo(0.023846, 5);
    expect(50 * rdpSampledGaussian(0.01, 2.5, 100)).toBeCloseTo(167.416307, 3);
    expect(rdpSampledGaussian(0, 2.5, 5)).toBe(0);
  });

  it('subsampling amplifies privacy, and ε grows with T and shrinks with z', () => {
    const base = { noiseMultiplier: 1.1, delta: 1e-5 };
    let previous = 0;
    for (const rounds of [1, 10, 100, 1000]) {
      const { epsilon } = privacyEpsilon({ ...base, sampleRate: 0.01, rounds });
      expect(epsilon).toBeGreaterThan(previous);
      previous = epsilon;
    }
    const sampled = privacyEpsilon({ ...base, sampleRate: 0.01, rounds: 100 }).epsilon;
    const full = privacyEpsilon({ ...base, sampleRate: 1, rounds: 100 }).epsilon;
    expect(sampled).toBeLessThan(full / 5);
    const noisier = privacyEpsilon({ ...base, noiseMultiplier: 2, sampleRate: 0.01, rounds: 100 }).epsilon;
    expect(noisier).toBeLessThan(sampled);
  });

  it('refuses bad settings', () => {
    refuses(() => privacyEpsilon({ noiseMultiplier: 0, rounds: 1, delta: 1e-5 }), 'bad-parameter');
    refuses(() => privacyEpsilon({ noiseMultiplier: 1, rounds: 0, delta: 1e-5 }), 'bad-parameter');
    refuses(() => privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 0 }), 'bad-parameter');
    refuses(() => privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 1 }), 'bad-parameter');
    refuses(
      () => privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 1e-5, sampleRate: 1.5 }),
      'bad-parameter',
    );
    refuses(
      () => privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 1e-5, orders: [] }),
      'bad-parameter',
    );
    refuses(
      () => privacyEpsilon({ noiseMultiplier: 1, rounds: 1, delta: 1e-5, orders: [1] }),
      'bad-parameter',
    );
    refuses(() => rdpSampledGaussian(0.5, 1, 2.5), 'bad-parameter');
  });
});
