/**
 * The refusals of the federated room; `code` is stable for tests, scripts and the receipt.
 * Secure aggregation's codes live beside the protocol (secagg.ts) and are joined here so that the
 * room has one error class with one closed union.
 */
import type { SecAggCode } from './secagg.js';

export type FederatedErrorCode = SecAggCode;

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
