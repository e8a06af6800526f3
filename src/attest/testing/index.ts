/**
 * Test authorities: issue evidence (real formats, test keys) for end-to-end tests. This is a separate
 * entry point on purpose — production code never imports from here (test/attest/testing-boundary.test.ts
 * enforces it). Each kind's authority lives in `./<kind>.ts` and is re-exported below.
 */

export * from './intel.js';
export { createNvidiaTestAuthority, type NvidiaTestAuthority, testNonce } from './nvidia.js';
export { createSampleForgery, type SampleForgery } from './sample.js';
export { type IssuedReport, SnpTestAuthority } from './snp.js';
