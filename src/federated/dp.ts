/**
 * Central differential privacy for federated updates (the DP-FedAvg recipe of McMahan et al. 2018):
 * each update is clipped to L2 norm C, so one client's influence on the sum is bounded by C; Gaussian
 * noise of standard deviation σ = z·C is added once to the sum; and an RDP accountant turns z, the
 * client sampling rate q and the number of rounds T into the (ε, δ) that the receipt reports.
 */

import { Rng } from '../util/index.js';
import { FederatedError } from './errors.js';
import { checkFinite, checkRange, checkVectors, type Vector } from './vector.js';

/** Scales v down to L2 norm `clipNorm` when it is longer; a shorter vector is copied unchanged. */
export function clipL2(
  v: Vector,
  clipNorm: number,
): { vector: Float64Array; norm: number; clipped: boolean } {
  checkRange(clipNorm, 'clipNorm', 0, Number.MAX_VALUE, { min: true });
  checkFinite(v, 'update');
  let s = 0;
  for (let j = 0; j < v.length; j++) s += (v[j] as number) * (v[j] as number);
  const norm = Math.sqrt(s);
  const out = Float64Array.from(v);
  if (norm <= clipNorm) return { vector: out, norm, clipped: false };
  const scale = clipNorm / norm;
  for (let j = 0; j < out.length; j++) out[j] = (out[j] as number) * scale;
  return { vector: out, norm, clipped: true };
}

/** C, z, and the seed of the noise (secret, drawn inside the TEE); `round` gives each round fresh noise. */
export interface DpOptions {
  readonly clipNorm: number;
  readonly noiseMultiplier: number;
  readonly seed: number;
  readonly round?: number;
}

/**
 * The noised sum of the clipped updates: Σ clip(uᵢ, C) + N(0, (z·C)²·I). Divide by the (expected)
 * number of clients for a mean; the division does not change the privacy. `clipped` counts the updates
 * that were longer than C, a signal that C is too small.
 */
export function dpSum(
  updates: readonly Vector[],
  options: DpOptions,
): { sum: Float64Array; clipped: number; sigma: number } {
  const length = checkVectors(updates, 'updates');
  checkRange(options.clipNorm, 'clipNorm', 0, Number.MAX_VALUE, { min: true });
  checkRange(options.noiseMultiplier, 'noiseMultiplier', 0, Number.MAX_VALUE);
  if (!Number.isSafeInteger(options.seed)) {
    throw new FederatedError('bad-parameter', `seed: ${options.seed} is not a safe integer`);
  }
  const round = options.round ?? 0;
  if (!Number.isSafeInteger(round) || round < 0) {
    throw new FederatedError('bad-parameter', `round: ${round} is not a non-negative integer`);
  }
  const sum = new Float64Array(length);
  let clipped = 0;
  for (const u of updates) {
    const c = clipL2(u, options.clipNorm);
    if (c.clipped) clipped++;
    for (let j = 0; j < length; j++) sum[j] = (sum[j] as number) + (c.vector[j] as number);
  }
  const sigma = options.noiseMultiplier * options.clipNorm;
  if (sigma > 0) {
    const rng = new Rng(options.seed, round);
    for (let j = 0; j < length; j++) sum[j] = (sum[j] as number) + sigma * rng.normal();
  }
  return { sum, clipped, sigma };
}

/** log(e^a + e^b) without overflow: the terms of the sampled-Gaussian sum reach e^1000 and beyond. */
function logAddExp(a: number, b: number): number {
  if (a === Number.NEGATIVE_INFINITY) return b;
  if (b === Number.NEGATIVE_INFINITY) return a;
  const hi = Math.max(a, b);
  return hi + Math.log1p(Math.exp(Math.min(a, b) - hi));
}

/**
 * Rényi DP at order α of one round of the Gaussian mechanism with noise multiplier z, applied to a
 * Poisson sample of rate q. q = 1: exactly α/(2z²) (any real α > 1). q < 1: the exact value for integer
 * α ≥ 2 of Mironov, Talwar & Zhang 2019 (Sec. 3.3), (1/(α−1))·log Σᵢ C(α,i)(1−q)^(α−i) qⁱ e^((i²−i)/(2z²)),
 * summed in log space; fractional orders need numerical integration and are refused.
 */
export function rdpSampledGaussian(q: number, z: number, alpha: number): number {
  checkRange(q, 'sampleRate', 0, 1);
  checkRange(z, 'noiseMultiplier', 0, Number.MAX_VALUE, { min: true });
  checkRange(alpha, 'order', 1, Number.MAX_VALUE, { min: true });
  if (q === 0) return 0;
  if (q === 1) return alpha / (2 * z * z);
  if (!Number.isInteger(alpha)) {
    throw new FederatedError('bad-parameter', `order: ${alpha} must be an integer when sampleRate < 1`);
  }
  const logQ = Math.log(q);
  const log1mQ = Math.log1p(-q);
  let logBinom = 0;
  let logA = Number.NEGATIVE_INFINITY;
  for (let i = 0; i <= alpha; i++) {
    if (i > 0) logBinom += Math.log(alpha - i + 1) - Math.log(i);
    logA = logAddExp(logA, logBinom + i * logQ + (alpha - i) * log1mQ + (i * i - i) / (2 * z * z));
  }
  return logA / (alpha - 1);
}

/**
 * Orders tried by default, as TF-Privacy's: fine steps near 1 where small-ε optima lie, integers up to
 * 64, then a few large ones for large z. Fractional orders are skipped when q < 1.
 */
export const DEFAULT_ORDERS: readonly number[] = [
  1.25,
  1.5,
  1.75,
  2.25,
  2.5,
  3.5,
  4.5,
  ...Array.from({ length: 63 }, (_, i) => i + 2),
  128,
  256,
  512,
];

export interface AccountantOptions {
  /** z: the noise standard deviation divided by the clip norm. */
  readonly noiseMultiplier: number;
  /** q: the probability that a client takes part in a round (Poisson sampling); 1 when all do. */
  readonly sampleRate?: number;
  /** T: rounds so far; RDP composes additively over them. */
  readonly rounds: number;
  readonly delta: number;
  readonly orders?: readonly number[];
}

/**
 * (ε, δ) after T rounds: ε = min over α of T·RDP(α) + log(1/δ)/(α−1) (Mironov 2017, Prop. 3), the
 * classic conversion (looser than Balle et al. 2020's by a little, but simple and what TF-Privacy's
 * original accountant reports). Returns the minimising order too, so a receipt can show it.
 */
export function privacyEpsilon(options: AccountantOptions): { epsilon: number; order: number } {
  const q = options.sampleRate ?? 1;
  checkRange(q, 'sampleRate', 0, 1);
  checkRange(options.noiseMultiplier, 'noiseMultiplier', 0, Number.MAX_VALUE, { min: true });
  checkRange(options.delta, 'delta', 0, 1, { min: true, max: true });
  if (!Number.isSafeInteger(options.rounds) || options.rounds < 1) {
    throw new FederatedError('bad-parameter', `rounds: ${options.rounds} is not a positive integer`);
  }
  const orders = options.orders ?? DEFAULT_ORDERS.filter((a) => q === 1 || Number.isInteger(a));
  if (orders.length === 0) throw new FederatedError('bad-parameter', 'orders: empty');
  const logInvDelta = -Math.log(options.delta);
  let best = { epsilon: Number.POSITIVE_INFINITY, order: Number.NaN };
  for (const alpha of orders) {
    const eps =
      options.rounds * rdpSampledGaussian(q, options.noiseMultiplier, alpha) + logInvDelta / (alpha - 1);
    if (eps < best.epsilon) best = { epsilon: eps, order: alpha };
  }
  return best;
}
