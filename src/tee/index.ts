/**
 * The front door of what runs inside the TEE (Node-only): the KBS client and the bridge to it, the
 * private directory, `cloister run`, the agent's local API, run receipts and attested (DSSE) receipts.
 * The evidence collectors (evidence/index.ts) and the default paths (defaults.ts) have light doors of
 * their own.
 */ export { serveAgentApi } from './api.js';
export {
  AttestedReceiptError,
  type AttestedReceiptErrorCode,
  type AttestedSigner,
  attestedReportData,
  createAttestedSigner,
  type ReceiptAttestation,
  signStatement,
  type VerifiedAttestedEnvelope,
  type VerifyAttestedOptions,
  verifyAttestedEnvelope,
} from './attested-receipt.js';
export { ConfinedDir } from './confined.js';
export type { CpuAttester, CpuKind } from './evidence/types.js';
export { type SealedOutput, sealInto, type UnsealedFile, unsealInto } from './files.js';
export { KbsClient } from './kbs-client.js';
export type { SampleEvidenceForm } from './keys.js';
export {
  AgentError,
  KekCache,
  kbsAttester,
  type ResourceSource,
  resourcePathOf,
  routeResources,
} from './keys.js';
export { findProgram, parentDeathWrapper, startGroupWatcher } from './lifetime.js';
export type { PrivateDirOptions } from './private-dir.js';
export { onTerminationSignal, PrivateDir, zeroAndUnlink } from './private-dir.js';
export { verifyReceipt } from './receipt.js';
export { runWorkload } from './run.js';
export { softwareIdentity } from './software.js';
