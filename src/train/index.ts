/** The front door of confidential training (Node-only): job manifests, built-in trainers, the job runner. */
export type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from './trainer.js';
export { serveTrainingApi, TRAIN_API_STATUS, TrainApiError } from './api.js';
export type { JobInfo, TrainingSession } from './session.js';
