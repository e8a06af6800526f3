/**
 * The front door of what runs inside the TEE (Node-only): evidence collectors, the KBS client and the
 * bridge to it, the private directory, `cloister run`, the agent's local API and run receipts.
 */
export { serveAgentApi } from './api.js';
export {
  DEFAULT_DEV_ROOT,
  DEFAULT_GRAMINE_ROOT,
  DEFAULT_PRIVATE_PARENT,
  DEFAULT_TSM_ROOT,
} from './defaults.js';
export { collectComposite } from './evidence/composite.js';
export type { Detection } from './evidence/detect.js';
export { detectTee, kindName } from './evidence/detect.js';
export { nodeFs, nodeRunner } from './evidence/node.js';
export type { GpuAttester } from './evidence/nvml.js';
export { InsecureSampleAttester } from './evidence/sample.js';
export type { CpuAttester, CpuKind } from './evidence/types.js';
export { KbsClient } from './kbs-client.js';
export type { SampleEvidenceForm } from './keys.js';
export { AgentError, KekCache, kbsAttester, resourcePathOf } from './keys.js';
export { onTerminationSignal, PrivateDir, zeroAndUnlink } from './private-dir.js';
export { verifyReceipt } from './receipt.js';
export { runWorkload } from './run.js';
