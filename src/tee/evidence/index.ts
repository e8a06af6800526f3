/** Evidence collection inside the TEE: attesters and detection (docs/agent.md, "Evidence collection"). */
export {
  type CollectedComposite,
  collectComposite,
  collectGpuEvidence,
  type GpuEvidence,
} from './composite.js';
export { type Detection, type DetectOptions, detectTee, kindName } from './detect.js';
export type { AgentFs, CommandRunner } from './fs.js';
export { GramineAttester, type GramineAttesterOptions } from './gramine.js';
export { evidenceReportData } from './layout.js';
export { nodeFs, nodeRunner } from './node.js';
export {
  detectGpus,
  type GpuAttester,
  type GpuDetection,
  type GpuDevice,
  NvattestGpuAttester,
  NvmlUnavailableGpuAttester,
  parseNvattestOutput,
} from './nvml.js';
export { InsecureSampleAttester, type InsecureSampleOptions, sampleHostData } from './sample.js';
export {
  TSM_PROVIDERS,
  TsmAttester,
  type TsmAttesterOptions,
  type TsmEvidence,
} from './tsm.js';
export {
  CollectionError,
  type CpuAttester,
  type CpuEvidence,
  type CpuKind,
  padReportData,
  REPORT_DATA_SIZE,
} from './types.js';
