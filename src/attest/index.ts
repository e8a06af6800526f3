/**
 * Public entry point of Cloister's attestation library. `defaultVerifiers()` is the single place that
 * decides which TEE kinds a default installation verifies; the CLI, the key broker and the client SDK
 * all build their registries from it.
 */

import { azSnpVtpmVerifier } from './azure/index.js';
import type { KindVerifier } from './common/types.js';
import { nvidiaVerifier } from './nvidia/index.js';
import { VerifierRegistry } from './registry.js';
import { sampleVerifier } from './sample/index.js';
import { snpVerifier } from './snp/index.js';

export * from './collateral/index.js';
export * from './common/types.js';
export * from './composite.js';
export * from './ear/index.js';
export * from './registry.js';
export { createSampleAttester, type SampleAttester, sampleVerifier } from './sample/index.js';

/** Every verifier Cloister ships, one per TEE kind. */
export function defaultVerifiers(): KindVerifier[] {
  return [snpVerifier, azSnpVtpmVerifier, nvidiaVerifier, sampleVerifier];
}

/** A fresh registry holding `defaultVerifiers()`. */
export function createDefaultRegistry(): VerifierRegistry {
  return new VerifierRegistry(defaultVerifiers());
}
