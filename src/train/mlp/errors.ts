/**
 * Refusals of the built-in MLP trainer. The codes are those of the training room's TrainError
 * (src/train/errors.ts) that this trainer can give, so the runner can pass them on unchanged.
 */
export type MlpCode = 'bad-hyperparameter' | 'bad-input' | 'checkpoint-state';

export class MlpError extends Error {
  override name = 'MlpError';
  constructor(
    readonly code: MlpCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
