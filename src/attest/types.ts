/**
 * Attestation's vocabulary (web-standard), cheap to load: the TEE kinds, evidence and appraisal types,
 * AttestationError with its codes, and the registry's kind detection, without the verifiers and their
 * certificate libraries behind index.ts. For code that names kinds and errors before, or instead of,
 * verifying anything (`cloister --help`, argument checks, evidence collectors).
 */
export * from './common/types.js';
export { detectKind, isTeeKind, VerifierRegistry } from './registry.js';
