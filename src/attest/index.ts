/**
 * Public entry point of Cloister's attestation library. `defaultVerifiers()` is the single place that
 * decides which TEE kinds a default installation verifies; the CLI, the key broker and the client SDK
 * all build their registries from it.
 */

import { fromHex } from '../util/index.js';
import { azSnpVtpmVerifier, createAzTdxVtpmVerifier } from './azure/index.js';
import type { KindVerifier } from './common/types.js';
import { verifyQuote } from './intel/index.js';
import { nvidiaVerifier } from './nvidia/index.js';
import { type RegistryOptions, VerifierRegistry } from './registry.js';
import { sampleVerifier } from './sample/index.js';
import { sgxVerifier } from './sgx/index.js';
import { snpVerifier } from './snp/index.js';
import { appraiseTdx, parseTdxQuote, tdxVerifier } from './tdx/index.js';

export {
  type CollateralVendor,
  collateralFiles,
  intelRequests,
  nvidiaRimRequest,
  type RecordedCollateral,
  recordingSource,
  snpProductRequests,
  type VendorSourceOptions,
  vendorOf,
  vendorSource,
} from './collateral/fetch.js';
export * from './collateral/index.js';
export * from './common/types.js';
export * from './composite.js';
export { createVerifierContext, type VerifierContext } from './context.js';
export * from './ear/index.js';
export * from './registry.js';
export { createSampleAttester, type SampleAttester, sampleVerifier } from './sample/index.js';

/** Azure TDX CVMs: the HCL binding is checked by the Azure module, the TD quote by the Intel one. */
const azTdxVtpmVerifier = createAzTdxVtpmVerifier(async (quote, options) => {
  const verified = await verifyQuote(parseTdxQuote(quote), options);
  const appraisal = appraiseTdx(verified, options.policy ? { policy: options.policy } : {});
  const hex = (k: string) => {
    const v = appraisal.claims[k];
    return typeof v === 'string' ? fromHex(v) : new Uint8Array(0);
  };
  return { reportData: hex('report_data'), mrtd: hex('mr_td'), appraisal };
});

/** Every verifier Cloister ships, one per TEE kind. */
export function defaultVerifiers(): KindVerifier[] {
  return [
    tdxVerifier,
    sgxVerifier,
    snpVerifier,
    azSnpVtpmVerifier,
    azTdxVtpmVerifier,
    nvidiaVerifier,
    sampleVerifier,
  ];
}

/**
 * A fresh registry holding `defaultVerifiers()`, remembering what it verified in `options.context`
 * (default: the shared default context, so that registries made per request still reuse it).
 */
export function createDefaultRegistry(options: RegistryOptions = {}): VerifierRegistry {
  return new VerifierRegistry(defaultVerifiers(), options);
}
export { MEASUREMENT_CLAIMS } from './common/appraise.js';
export { encodeNvidiaEvidence } from './nvidia/index.js';
export { cocoSampleEvidence } from './sample/index.js';
export type { CertTableEntry } from './snp/certtable.js';
export { certTableCollateral, GUID_VCEK, GUID_VLEK, parseCertTable } from './snp/certtable.js';
export { fromCocoSnpEvidence } from './snp/coco.js';
