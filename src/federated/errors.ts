/**
 * Refusals of the federated room's pure pieces (aggregation, differential privacy, secure
 * aggregation). One closed union of codes so that a coordinator can log, count and test each refusal
 * without parsing messages; secure aggregation's codes live beside the protocol (secagg.ts).
 */
import type { SecAggCode } from './secagg.js';

export type FederatedErrorCode =
  /** No updates at all: nothing to aggregate. */
  | 'no-updates'
  /** Two updates (or an update and the model) of different lengths. */
  | 'length-mismatch'
  /** A NaN or ±Infinity inside an update: one poisoned float would spread to every weight. */
  | 'non-finite'
  /** An example count that is negative, fractional, non-finite, or all counts zero. */
  | 'bad-weight'
  /** A numeric setting out of its range (β, τ, η, clip norm, noise multiplier, δ, orders…). */
  | 'bad-parameter'
  /** Too many tolerated Byzantine clients for the rule (Krum needs n > 2f + 2). */
  | 'too-many-byzantine'
  | SecAggCode;

export class FederatedError extends Error {
  override name = 'FederatedError';
  constructor(
    readonly code: FederatedErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
