/** The front door of confidential training (Node-only): job manifests, built-in trainers, the job runner. */

export { type TrainingFacts, verifyTrainingReceipt } from '../tee/training-receipt.js';
export { serveTrainingApi, TRAIN_API_STATUS, TrainApiError } from './api.js';
export { BUILTIN_TRAINERS, runTrainingJob, type TrainingJobOptions } from './app.js';
export { TrainError, type TrainErrorCode } from './errors.js';
export { type JobResult, type PreparedJob, prepareJob, RECEIPT_FILE, type TrainBroker } from './job.js';
export { createLlamaTrainer, LlamaError, readLlamaGguf } from './llama/index.js';
export { type Manifest, parseManifest } from './manifest.js';
export { type MetricRecord, MetricsError, MetricsLog, parseMetrics } from './metrics.js';
export {
  createMlpTrainer,
  type MlpCode,
  MlpError,
  type MlpHyperparameters,
  type MlpPrediction,
  type MlpTrainer,
} from './mlp/index.js';
export { formatDuration, formatProgress, type ProgressFigures, ThroughputTracker } from './progress.js';
export { renderReport } from './report.js';
export type { JobInfo, TrainingSession } from './session.js';
export { readTable, type Table, type TabularCode, TabularError, type TabularFormat } from './tabular.js';
export type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from './trainer.js';
