/**
 * What the training API (api.ts) serves a bring-your-own trainer from: the job runner implements
 * `TrainingSession` for one job, and the API only translates HTTP to these calls. Keeping the runner
 * behind this interface lets the API be tested with an in-memory session and keeps keys, sealing and
 * the broker's compare-and-set out of the HTTP layer.
 */

/** The job as a trainer sees it: plaintext paths inside the private directory, never sealed files. */
export interface JobInfo {
  /** The job id: lower-case hex SHA-256 of the manifest file's exact bytes. */
  job: string;
  /** The manifest's `name`. */
  name: string;
  /** The manifest's hyperparameters, as written (the trainer checks them). */
  hyperparameters: Record<string, unknown>;
  seed: number;
  /** Manifest input name → path of its unsealed plaintext. */
  inputs: Record<string, string>;
  /** Where the trainer writes its outputs; the runner seals what it finds there after `finish`. */
  outputDir: string;
  /** Path of the unsealed starting model, when the manifest names one. */
  startModel?: string;
  /** Path of the unsealed frozen base model (fine-tuning), when the manifest names one. */
  base?: string;
}

/** A checkpoint as the trainer saved it: its number in the job's chain, the step, the opaque state. */
export interface CheckpointState {
  number: number;
  step: number;
  state: Uint8Array;
}

/**
 * One job's side of the training API. Errors a method throws may carry a string `code`:
 * `checkpoint-conflict` and `checkpoint-rollback` are answered 409, any other 500 with the message
 * (the code becomes the problem's type), so name nothing secret in them.
 */
export interface TrainingSession {
  readonly info: JobInfo;
  /** The latest checkpoint of the job (decrypted, chain checked), or null before the first. */
  latest(): Promise<CheckpointState | null>;
  /**
   * Seals `state` (plaintext, in memory only) as the next checkpoint of the chain and records it with
   * the broker. The session owns `state` from then on (it may keep or zero it). The API calls this one
   * at a time, in the order the trainer's requests arrived.
   */
  save(state: Uint8Array, step: number): Promise<{ number: number; sha256: string }>;
  /** One step's scalars, `step` included (an integer ≥ 0); every value finite. */
  metrics(m: Record<string, number>): void;
  /** The trainer is done; `m`: final metrics (finite numbers). Called at most once. */
  finish(m?: Record<string, number>): void;
}
