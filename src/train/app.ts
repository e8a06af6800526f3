/**
 * The composition root of confidential training (Node-only): a prepared job (job.ts) run with the
 * built-in trainers, the training API for command trainers, and receipts signed by a key bound into
 * the TEE's evidence with the job id, made before anything else happens.
 */
import { createAttestedSigner } from '../tee/index.js';
import { signTrainingReceipt } from '../tee/training-receipt.js';
import { fromHex, utf8 } from '../util/index.js';
import { type JobResult, type PreparedJob, type RunJobOptions, runJob } from './job.js';
import type { BuiltinTrainer, TrainerInput } from './trainer.js';

/** The built-in trainers by manifest name, each loaded when a job names it. */
export const BUILTIN_TRAINERS: Record<string, (input: TrainerInput) => Promise<BuiltinTrainer>> = {
  mlp: async (input) => (await import('./mlp/index.js')).createMlpTrainer(input),
  llama: async (input) => (await import('./llama/index.js')).createLlamaTrainer(input),
  lora: async (input) => (await import('./lora/trainer.js')).createLoraTrainer(input),
  'lora-convert': async (input) => (await import('./lora/convert.js')).createLoraConverter(input),
};

export type TrainingJobOptions = Omit<RunJobOptions, 'builtins' | 'serveApi' | 'signReceipt'>;

/** Runs a prepared job in the TEE (see job.ts for the order of things and why). */
export async function runTrainingJob(p: PreparedJob, o: TrainingJobOptions): Promise<JobResult> {
  // First: a TEE that cannot attest fails before a key is asked for or a byte unsealed.
  const signer = await createAttestedSigner(o.tee.attester, fromHex(p.parsed.job));
  return runJob(p, {
    ...o,
    builtins: BUILTIN_TRAINERS,
    // Not every request: a trainer reporting metrics each step would bury the log.
    serveApi: async (socketPath, session) =>
      (await import('./api.js')).serveTrainingApi({ socketPath, session }),
    signReceipt: async (facts, ear) =>
      utf8.encode(`${JSON.stringify(await signTrainingReceipt(facts, signer, { ear }), null, 2)}\n`),
  });
}
