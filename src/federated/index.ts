/**
 * The federated room's front door (web-standard): aggregation rules, central DP, the accountant and
 * secure aggregation. The coordinator and clients that use them are still to come (issue 15).
 */
export type { AdaptiveOptions, AdaptiveRule, AdaptiveState, Vector, WeightedUpdate } from './aggregate.js';
export {
  adaptiveStep,
  coordinateMedian,
  fedAdam,
  fedAvg,
  fedYogi,
  krum,
  krumScores,
  mean,
  multiKrum,
  trimmedMean,
} from './aggregate.js';
export type { AccountantOptions, DpOptions } from './dp.js';
export { clipL2, DEFAULT_ORDERS, dpSum, privacyEpsilon, rdpSampledGaussian } from './dp.js';
export type { FederatedErrorCode } from './errors.js';
export { FederatedError } from './errors.js';
export type {
  Quantisation,
  SecAggClient,
  SecAggCode,
  SecAggConfig,
  SecAggShare,
  UnmaskRequest,
  UnmaskResponse,
} from './secagg.js';
export {
  createSecAggClient,
  dequantiseSum,
  quantise,
  shamirCombine,
  shamirSplit,
  unmaskSum,
} from './secagg.js';
