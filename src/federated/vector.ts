/** Shared checks of update vectors, so every rule refuses bad input the same way, with the same codes. */
import { FederatedError } from './errors.js';

/** A flat parameter vector (or update): both float widths are accepted, sums are kept in doubles. */
export type Vector = Float32Array | Float64Array;

/**
 * Refuses an empty list, vectors of different lengths and any NaN/Infinity; returns the common length.
 * `what` names the argument in the message (e.g. "updates").
 */
export function checkVectors(vectors: readonly Vector[], what: string): number {
  if (vectors.length === 0) throw new FederatedError('no-updates', `${what}: empty, nothing to aggregate`);
  const length = (vectors[0] as Vector).length;
  for (let i = 0; i < vectors.length; i++) {
    const v = vectors[i] as Vector;
    if (v.length !== length) {
      throw new FederatedError('length-mismatch', `${what}[${i}]: length ${v.length}, expected ${length}`);
    }
    checkFinite(v, `${what}[${i}]`);
  }
  return length;
}

/** Refuses a NaN or ±Infinity, naming the first bad coordinate. */
export function checkFinite(v: Vector, what: string): void {
  for (let j = 0; j < v.length; j++) {
    if (!Number.isFinite(v[j] as number)) {
      throw new FederatedError('non-finite', `${what}: coordinate ${j} is ${v[j]}, not a finite number`);
    }
  }
}

/** Refuses a numeric setting that is not finite or not within [min, max] (bounds inclusive unless open). */
export function checkRange(
  value: number,
  name: string,
  min: number,
  max: number,
  open: { min?: boolean; max?: boolean } = {},
): void {
  const ok =
    Number.isFinite(value) &&
    (open.min === true ? value > min : value >= min) &&
    (open.max === true ? value < max : value <= max);
  if (!ok) {
    const lo = open.min === true ? '(' : '[';
    const hi = open.max === true ? ')' : ']';
    throw new FederatedError('bad-parameter', `${name}: ${value} is not in ${lo}${min}, ${max}${hi}`);
  }
}
