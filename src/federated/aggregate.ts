/**
 * Server-side aggregation rules of federated learning, pure and web-standard: they take update vectors
 * (already unsealed inside the coordinator's TEE) and return new vectors, never touching I/O, so the
 * same code runs in the coordinator, a bench and a browser test. Sums are kept in Float64Array: a
 * Float32 accumulator over a thousand clients loses the low bits of small updates.
 */
import { FederatedError } from './errors.js';
import { checkFinite, checkRange, checkVectors, type Vector } from './vector.js';

export type { Vector } from './vector.js';

/** One client's update and the number of examples it trained on (its FedAvg weight). */
export interface WeightedUpdate {
  readonly vector: Vector;
  readonly examples: number;
}

/**
 * FedAvg (McMahan et al. 2017): the average of the updates weighted by example counts, so a client with
 * ten times the data counts ten times. Counts must be non-negative integers with a positive sum.
 */
export function fedAvg(updates: readonly WeightedUpdate[]): Float64Array {
  const length = checkVectors(
    updates.map((u) => u.vector),
    'updates',
  );
  let total = 0;
  for (let i = 0; i < updates.length; i++) {
    const n = (updates[i] as WeightedUpdate).examples;
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new FederatedError('bad-weight', `updates[${i}].examples: ${n} is not a non-negative integer`);
    }
    total += n;
  }
  if (total === 0)
    throw new FederatedError('bad-weight', 'updates: total example count is 0, nothing to weigh');
  const out = new Float64Array(length);
  for (const { vector, examples } of updates) {
    if (examples === 0) continue;
    const w = examples / total;
    for (let j = 0; j < length; j++) out[j] = (out[j] as number) + w * (vector[j] as number);
  }
  return out;
}

/** The plain (unweighted) mean: the pseudo-gradient Δ of Reddi et al.'s adaptive optimizers. */
export function mean(vectors: readonly Vector[]): Float64Array {
  const length = checkVectors(vectors, 'updates');
  const out = new Float64Array(length);
  for (const v of vectors) for (let j = 0; j < length; j++) out[j] = (out[j] as number) + (v[j] as number);
  for (let j = 0; j < length; j++) out[j] = (out[j] as number) / vectors.length;
  return out;
}

/** Moments of the server optimizer; returned by each step and passed back in, so a restart resumes it. */
export interface AdaptiveState {
  readonly m: Float64Array;
  readonly v: Float64Array;
}

/** Server learning rate η, moment decays β1 and β2, and τ, the adaptivity floor (ε of Adam). */
export interface AdaptiveOptions {
  readonly eta: number;
  readonly beta1?: number;
  readonly beta2?: number;
  readonly tau?: number;
}

export type AdaptiveRule = 'adam' | 'yogi';

/**
 * One server step of FedAdam or FedYogi (Reddi et al. 2021, Algorithm 2), from a pseudo-gradient Δ
 * already aggregated (by `mean`, `fedAvg` or a robust rule, so robustness and adaptivity compose):
 *   m ← β1·m + (1−β1)·Δ
 *   Adam: v ← β2·v + (1−β2)·Δ²      Yogi: v ← v − (1−β2)·Δ²·sign(v − Δ²)
 *   x ← x + η·m / (√v + τ)
 * With no state, m starts at 0 and v at τ² (the paper's v₋₁ ≥ τ²). As in the paper there is no bias
 * correction. Defaults are the paper's: β1 = 0.9, β2 = 0.99, τ = 1e-3.
 */
export function adaptiveStep(
  rule: AdaptiveRule,
  model: Vector,
  delta: Vector,
  state: AdaptiveState | undefined,
  options: AdaptiveOptions,
): { model: Float64Array; state: AdaptiveState } {
  const beta1 = options.beta1 ?? 0.9;
  const beta2 = options.beta2 ?? 0.99;
  const tau = options.tau ?? 1e-3;
  checkRange(options.eta, 'eta', 0, Number.MAX_VALUE, { min: true });
  checkRange(beta1, 'beta1', 0, 1, { max: true });
  checkRange(beta2, 'beta2', 0, 1, { max: true });
  checkRange(tau, 'tau', 0, Number.MAX_VALUE, { min: true });
  const length = model.length;
  checkFinite(model, 'model');
  if (delta.length !== length) {
    throw new FederatedError('length-mismatch', `delta: length ${delta.length}, model has ${length}`);
  }
  checkFinite(delta, 'delta');
  if (state !== undefined && (state.m.length !== length || state.v.length !== length)) {
    throw new FederatedError(
      'length-mismatch',
      `state: m/v lengths ${state.m.length}/${state.v.length}, model has ${length}`,
    );
  }
  const m = state === undefined ? new Float64Array(length) : Float64Array.from(state.m);
  const v = state === undefined ? new Float64Array(length).fill(tau * tau) : Float64Array.from(state.v);
  const out = new Float64Array(length);
  for (let j = 0; j < length; j++) {
    const d = delta[j] as number;
    const d2 = d * d;
    const mj = beta1 * (m[j] as number) + (1 - beta1) * d;
    const vPrev = v[j] as number;
    const vj =
      rule === 'adam' ? beta2 * vPrev + (1 - beta2) * d2 : vPrev - (1 - beta2) * d2 * Math.sign(vPrev - d2);
    m[j] = mj;
    v[j] = vj;
    out[j] = (model[j] as number) + (options.eta * mj) / (Math.sqrt(vj) + tau);
  }
  return { model: out, state: { m, v } };
}

/** FedAdam: Δ = the mean of the clients' deltas, then one Adam step on the server. */
export function fedAdam(
  model: Vector,
  deltas: readonly Vector[],
  state: AdaptiveState | undefined,
  options: AdaptiveOptions,
): { model: Float64Array; state: AdaptiveState } {
  return adaptiveStep('adam', model, mean(deltas), state, options);
}

/** FedYogi: as FedAdam, but v grows additively, so a burst of large Δ does not inflate it for long. */
export function fedYogi(
  model: Vector,
  deltas: readonly Vector[],
  state: AdaptiveState | undefined,
  options: AdaptiveOptions,
): { model: Float64Array; state: AdaptiveState } {
  return adaptiveStep('yogi', model, mean(deltas), state, options);
}

/**
 * Coordinate-wise median: each weight is the median of the clients' values, so fewer than half of the
 * clients, however wild, cannot move it beyond the honest range. Even n: mean of the two middle values.
 */
export function coordinateMedian(vectors: readonly Vector[]): Float64Array {
  const length = checkVectors(vectors, 'updates');
  const n = vectors.length;
  const column = new Float64Array(n);
  const out = new Float64Array(length);
  for (let j = 0; j < length; j++) {
    for (let i = 0; i < n; i++) column[i] = (vectors[i] as Vector)[j] as number;
    column.sort();
    const h = n >> 1;
    out[j] = n % 2 === 1 ? (column[h] as number) : ((column[h - 1] as number) + (column[h] as number)) / 2;
  }
  return out;
}

/**
 * Coordinate-wise trimmed mean (Yin et al. 2018): per weight, drop the ⌊β·n⌋ smallest and largest
 * values and average the rest. β in [0, 0.5): at least one value must remain.
 */
export function trimmedMean(vectors: readonly Vector[], beta: number): Float64Array {
  checkRange(beta, 'beta', 0, 0.5, { max: true });
  const length = checkVectors(vectors, 'updates');
  const n = vectors.length;
  const k = Math.floor(beta * n);
  const kept = n - 2 * k;
  const column = new Float64Array(n);
  const out = new Float64Array(length);
  for (let j = 0; j < length; j++) {
    for (let i = 0; i < n; i++) column[i] = (vectors[i] as Vector)[j] as number;
    column.sort();
    let s = 0;
    for (let i = k; i < n - k; i++) s += column[i] as number;
    out[j] = s / kept;
  }
  return out;
}

/**
 * Krum scores (Blanchard et al. 2017): for each update, the sum of squared distances to its n − f − 2
 * nearest others. An honest update sits in a crowd of honest ones and scores low; an outlier cannot.
 * Refuses n ≤ 2f + 2, where the guarantee of the paper no longer holds.
 */
export function krumScores(vectors: readonly Vector[], f: number): Float64Array {
  const length = checkVectors(vectors, 'updates');
  const n = vectors.length;
  if (!Number.isSafeInteger(f) || f < 0) {
    throw new FederatedError('bad-parameter', `f: ${f} is not a non-negative integer`);
  }
  if (n <= 2 * f + 2) {
    throw new FederatedError(
      'too-many-byzantine',
      `f: ${f} Byzantine clients need n > ${2 * f + 2}, got n = ${n}`,
    );
  }
  const d = new Float64Array(n * n);
  for (let a = 0; a < n; a++) {
    const va = vectors[a] as Vector;
    for (let b = a + 1; b < n; b++) {
      const vb = vectors[b] as Vector;
      let s = 0;
      for (let j = 0; j < length; j++) {
        const t = (va[j] as number) - (vb[j] as number);
        s += t * t;
      }
      d[a * n + b] = s;
      d[b * n + a] = s;
    }
  }
  const neighbours = n - f - 2;
  const scores = new Float64Array(n);
  const row = new Float64Array(n - 1);
  for (let a = 0; a < n; a++) {
    let r = 0;
    for (let b = 0; b < n; b++) if (b !== a) row[r++] = d[a * n + b] as number;
    row.sort();
    let s = 0;
    for (let i = 0; i < neighbours; i++) s += row[i] as number;
    scores[a] = s;
  }
  return scores;
}

/** Krum: the single update with the lowest score (ties: the lowest index, so the choice is reproducible). */
export function krum(vectors: readonly Vector[], f: number): { index: number; vector: Float64Array } {
  const { indices, vector } = multiKrum(vectors, f, 1);
  return { index: indices[0] as number, vector };
}

/**
 * Multi-Krum: the mean of the m updates with the lowest Krum scores, trading a little robustness for
 * the variance reduction of averaging. m in [1, n − f]: more would have to include a suspected update.
 */
export function multiKrum(
  vectors: readonly Vector[],
  f: number,
  m: number,
): { indices: number[]; vector: Float64Array } {
  const scores = krumScores(vectors, f);
  const n = vectors.length;
  if (!Number.isSafeInteger(m) || m < 1 || m > n - f) {
    throw new FederatedError('bad-parameter', `m: ${m} is not an integer in [1, ${n - f}]`);
  }
  const order = Array.from({ length: n }, (_, i) => i).sort(
    (a, b) => (scores[a] as number) - (scores[b] as number) || a - b,
  );
  const indices = order.slice(0, m).sort((a, b) => a - b);
  return { indices, vector: mean(indices.map((i) => vectors[i] as Vector)) };
}
