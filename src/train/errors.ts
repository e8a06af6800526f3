/** The refusals and failures of a training job; `code` is stable for tests, scripts and the receipt. */
export type TrainErrorCode =
  | 'bad-manifest'
  | 'bad-hyperparameter'
  | 'bad-input'
  | 'input-digest'
  | 'checkpoint-chain'
  | 'checkpoint-rollback'
  | 'checkpoint-decrypt'
  | 'checkpoint-state'
  | 'trainer-failed'
  | 'trainer-digest'
  | 'no-space'
  | 'bad-model'
  | 'bad-adapter'
  | 'bad-receipt'
  | 'bad-init-data';

export class TrainError extends Error {
  override name = 'TrainError';
  constructor(
    readonly code: TrainErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
