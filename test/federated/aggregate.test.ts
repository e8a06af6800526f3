import { describe, expect, it } from 'vitest';
import {
  adaptiveStep,
  coordinateMedian,
  FederatedError,
  fedAdam,
  fedAvg,
  fedYogi,
  krum,
  krumScores,
  mean,
  multiKrum,
  trimmedMean,
} from '../../src/federated/index.js';

/** Asserts that `fn` throws a FederatedError with `code` and a one-line message. */
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

const f32 = (...xs: number[]) => Float32Array.from(xs);
const f64 = (...xs: number[]) => Float64Array.from(xs);

/** Seven honest clients whose updates cluster around (1, −1, 0.5), and poisoned ones far away. */
const honest = [
  f32(1.0, -1.0, 0.5),
  f32(1.1, -0.9, 0.4),
  f32(0.9, -1.1, 0.6),
  f32(1.05, -1.0, 0.55),
  f32(0.95, -0.95, 0.45),
  f32(1.0, -1.05, 0.5),
  f32(1.02, -0.98, 0.52),
];
const poison = f32(1000, 1000, -1000);

describe('fedAvg', () => {
  it('weights updates by example counts', () => {
    const out = fedAvg([
      { vector: f32(1, 0), examples: 30 },
      { vector: f64(0, 1), examples: 10 },
    ]);
    expect(out).toBeInstanceOf(Float64Array);
    expect(Array.from(out)).toEqual([0.75, 0.25]);
  });

  it('ignores a client with zero examples rather than dividing by it', () => {
    const out = fedAvg([
      { vector: f32(2, 2), examples: 5 },
      { vector: f32(100, 100), examples: 0 },
    ]);
    expect(Array.from(out)).toEqual([2, 2]);
  });

  it('refuses bad input, one code each', () => {
    refuses(() => fedAvg([]), 'no-updates');
    refuses(
      () =>
        fedAvg([
          { vector: f32(1, 2), examples: 1 },
          { vector: f32(1), examples: 1 },
        ]),
      'length-mismatch',
    );
    refuses(() => fedAvg([{ vector: f32(1, Number.NaN), examples: 1 }]), 'non-finite');
    refuses(() => fedAvg([{ vector: f64(Number.POSITIVE_INFINITY), examples: 1 }]), 'non-finite');
    refuses(() => fedAvg([{ vector: f32(1), examples: 0 }]), 'bad-weight');
    refuses(() => fedAvg([{ vector: f32(1), examples: -1 }]), 'bad-weight');
    refuses(() => fedAvg([{ vector: f32(1), examples: 1.5 }]), 'bad-weight');
  });
});

describe('FedAdam and FedYogi', () => {
  it('FedAdam matches a hand computation of one step (Reddi et al. 2021, Algorithm 2)', () => {
    // Δ = mean((0.2, −0.4), (0.4, 0)) = (0.3, −0.2); m = 0.1·Δ = (0.03, −0.02);
    // v = 0.99·τ² + 0.01·Δ² = (0.00090099, 0.00040099); x + η·m/(√v + τ) with η = 0.1, τ = 1e-3.
    const { model, state } = fedAdam(f32(1, 2), [f32(0.2, -0.4), f32(0.4, 0)], undefined, { eta: 0.1 });
    expect(state.m[0]).toBeCloseTo(0.03, 6);
    expect(state.m[1]).toBeCloseTo(-0.02, 6);
    expect(state.v[0]).toBeCloseTo(0.00090099, 7);
    expect(state.v[1]).toBeCloseTo(0.00040099, 7);
    expect(model[0]).toBeCloseTo(1.096722726246938, 6);
    expect(model[1]).toBeCloseTo(1.9048739483244113, 6);
  });

  it('FedYogi grows v additively: from v = τ² it gives τ² + (1−β2)Δ²', () => {
    const { model, state } = fedYogi(f32(1), [f32(0.3)], undefined, { eta: 0.1 });
    expect(state.v[0]).toBeCloseTo(0.000901, 9);
    expect(model[0]).toBeCloseTo(1.0967222067986908, 6);
  });

  it('returns its state, which a second step continues from (and the input state is not mutated)', () => {
    const first = adaptiveStep('adam', f32(0), f32(1), undefined, { eta: 1 });
    const m0 = Float64Array.from(first.state.m);
    const second = adaptiveStep('adam', first.model, f32(1), first.state, { eta: 1 });
    expect(Array.from(first.state.m)).toEqual(Array.from(m0));
    expect(second.state.m[0]).toBeCloseTo(0.9 * 0.1 + 0.1, 12);
    // Consistent pseudo-gradients keep pushing the model the same way.
    expect(second.model[0] as number).toBeGreaterThan(first.model[0] as number);
  });

  it('refuses bad settings and mismatched state', () => {
    refuses(() => adaptiveStep('adam', f32(0), f32(1), undefined, { eta: 0 }), 'bad-parameter');
    refuses(() => adaptiveStep('adam', f32(0), f32(1), undefined, { eta: 1, beta1: 1 }), 'bad-parameter');
    refuses(() => adaptiveStep('yogi', f32(0), f32(1), undefined, { eta: 1, tau: 0 }), 'bad-parameter');
    refuses(() => adaptiveStep('adam', f32(0, 1), f32(1), undefined, { eta: 1 }), 'length-mismatch');
    refuses(
      () => adaptiveStep('adam', f32(0), f32(1), { m: f64(0, 0), v: f64(1, 1) }, { eta: 1 }),
      'length-mismatch',
    );
    refuses(() => adaptiveStep('adam', f32(Number.NaN), f32(1), undefined, { eta: 1 }), 'non-finite');
    refuses(() => fedAdam(f32(0), [], undefined, { eta: 1 }), 'no-updates');
  });
});

describe('robust rules', () => {
  it('the mean is dragged away by one poisoned update; the median is not', () => {
    const updates = [...honest, poison];
    const avg = mean(updates);
    expect(avg[0] as number).toBeGreaterThan(100);
    const med = coordinateMedian(updates);
    for (const [j, centre] of [1, -1, 0.5].entries()) {
      expect(Math.abs((med[j] as number) - centre)).toBeLessThan(0.06);
    }
  });

  it('median: odd n takes the middle value, even n the mean of the two middle ones', () => {
    expect(Array.from(coordinateMedian([f32(3), f32(1), f32(2)]))).toEqual([2]);
    expect(Array.from(coordinateMedian([f32(4), f32(1), f32(3), f32(2)]))).toEqual([2.5]);
  });

  it('trimmed mean cuts ⌊β·n⌋ values each side and averages the rest', () => {
    // n = 5, β = 0.2: drop 1 and 100 → mean(2, 3, 4) = 3.
    expect(Array.from(trimmedMean([f32(1), f32(2), f32(3), f32(4), f32(100)], 0.2))).toEqual([3]);
    // β = 0 is the plain mean.
    expect(Array.from(trimmedMean([f32(1), f32(2)], 0))).toEqual([1.5]);
    const robust = trimmedMean([...honest, poison, poison], 0.25);
    expect(Math.abs((robust[0] as number) - 1)).toBeLessThan(0.06);
    refuses(() => trimmedMean(honest, 0.5), 'bad-parameter');
    refuses(() => trimmedMean(honest, -0.1), 'bad-parameter');
    refuses(() => trimmedMean([f32(1), f32(Number.NaN)], 0.1), 'non-finite');
  });

  it('Krum picks an honest update even with two colluding poisoned ones', () => {
    const updates = [
      honest[0],
      poison,
      honest[1],
      honest[2],
      f32(999, 999, -999),
      honest[3],
      honest[4],
    ] as Float32Array[];
    const { index, vector } = krum(updates, 2);
    expect([0, 2, 3, 5, 6]).toContain(index);
    expect(Math.abs((vector[0] as number) - 1)).toBeLessThan(0.2);
    const scores = krumScores(updates, 2);
    expect(scores[1] as number).toBeGreaterThan(scores[index] as number);
  });

  it('Multi-Krum averages the m best-scored updates, all honest', () => {
    const updates = [...honest, poison, f32(-500, 20, 7)];
    const { indices, vector } = multiKrum(updates, 2, 5);
    expect(indices).toHaveLength(5);
    for (const i of indices) expect(i).toBeLessThan(honest.length);
    expect(Math.abs((vector[1] as number) + 1)).toBeLessThan(0.1);
  });

  it('Krum refuses n ≤ 2f + 2 and bad f or m', () => {
    refuses(() => krum(honest.slice(0, 6), 2), 'too-many-byzantine');
    refuses(() => krum(honest, -1), 'bad-parameter');
    refuses(() => krum(honest, 1.5), 'bad-parameter');
    refuses(() => multiKrum(honest, 2, 0), 'bad-parameter');
    refuses(() => multiKrum(honest, 2, 6), 'bad-parameter');
    refuses(() => krum([f32(1, 2), f32(1), f32(1), f32(1)], 0), 'length-mismatch');
    refuses(() => krum([], 0), 'no-updates');
  });
});
