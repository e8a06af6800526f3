/** The front door of confidential training (Node-only): job manifests, built-in trainers, the job runner. */

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
export { readTable, type Table, type TabularCode, TabularError, type TabularFormat } from './tabular.js';
export type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from './trainer.js';
export { serveTrainingApi, TRAIN_API_STATUS, TrainApiError } from './api.js';
export type { JobInfo, TrainingSession } from './session.js';
