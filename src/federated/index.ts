/** The federated room's front door (web-standard): aggregation rules, central DP, the accountant. */
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
