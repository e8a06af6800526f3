/** The front door of confidential training (Node-only): job manifests, built-in trainers, the job runner. */
export type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from './trainer.js';
