/**
 * Errors of the llama trainer. The codes are a subset of the job runner's TrainError codes, so the
 * runner can pass them on unchanged: `bad-hyperparameter` (the message names
 * `hyperparameters.<field>`), `bad-input` (the corpus), `bad-model` (a starting GGUF this trainer
 * cannot continue from), `checkpoint-state` (a saved state of another trainer, shape or
 * configuration, or a damaged one).
 */
export type LlamaErrorCode = 'bad-hyperparameter' | 'bad-input' | 'bad-model' | 'checkpoint-state';

export class LlamaError extends Error {
  override name = 'LlamaError';
  constructor(
    readonly code: LlamaErrorCode,
    message: string,
  ) {
    super(message);
  }
}
