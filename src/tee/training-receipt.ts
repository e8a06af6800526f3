/**
 * Training receipts: what a confidential training job did, as an in-toto Statement in a DSSE envelope
 * signed by the job's attested key (src/tee/attested-receipt.ts). The subjects are the sealed outputs
 * (so `cosign verify-attestation`-style tools and policies can look a model up by its digest); the
 * predicate records the manifest, sealed inputs, trainer, hyperparameters, seed, the checkpoint hash
 * chain, final metrics, outputs and their recipients, the TEE and the times.
 *
 * Predicate type: TRAINING_PREDICATE_TYPE, "https://cloister.dev/attestation/training/v1". A new
 * version (a field changing meaning) gets a new URI; added optional fields keep v1.
 *
 * The receipt key is bound to the job: its context is the 32-byte manifest digest (the job id), which
 * the verifier checks equals `predicate.manifest.sha256`.
 */
import type { Appraisal, EarResult } from '../attest/index.js';
import { canonicalizeBytes, fromHex, toHex, utf8 } from '../util/index.js';
import {
  type BaseOutputs,
  type DsseEnvelope,
  IN_TOTO_STATEMENT_TYPE,
  INIT_DATA_FIELDS,
  INIT_DATA_JOB,
  type InTotoStatement,
  TRAINING_PREDICATE_TYPE,
  trainInitData,
} from '../wire/index.js';
import {
  type AttestedSigner,
  type ReceiptAttestation,
  signStatement,
  type VerifiedAttestedEnvelope,
  type VerifyAttestedOptions,
  verifyAttestedEnvelope,
} from './attested-receipt.js';

export { TRAINING_PREDICATE_TYPE };

/** The sealed file of a LoRA merged into its base (`outputs.merged`): the one output its owner gets. */
export const MERGED_OUTPUT = 'model-merged.gguf.sealed';

/** A built-in trainer: the code that ran is Cloister's own, named by its package version and digest. */
export interface BuiltinTrainerRecord {
  kind: 'builtin';
  /** "llama", "mlp". */
  name: string;
  software: { name: string; version: string; digest: string };
}

/** A bring-your-own trainer command: its argv, the program it resolved to and the job's files. */
export interface CommandTrainerRecord {
  kind: 'command';
  argv: string[];
  program: { path: string; sha256: string };
  files: { path: string; sha256: string }[];
}

export type TrainerRecord = BuiltinTrainerRecord | CommandTrainerRecord;

export interface TrainingInputRecord {
  /** The manifest's name for the input. */
  name: string;
  /** SHA-256 (hex) of the sealed file as read. */
  sealedSha256: string;
  /** The key-broker URI whose KEK opened it. */
  kbs: string;
}

export interface CheckpointRecord {
  /** 1, 2, … in order. */
  number: number;
  /** Optimizer steps completed when it was taken. */
  step: number;
  sealedSha256: string;
  /** The previous checkpoint's sealedSha256; null for the first. */
  prev: string | null;
}

export interface TrainingOutputRecord {
  /** File name of the sealed output (relative to the output directory). */
  file: string;
  sealedSha256: string;
  /** Recipient key ids (kbs:///… URIs, hpke:…). */
  recipients: string[];
}

/** What the runner states about a job; `attestation` is added when it is signed. */
export interface TrainingFacts {
  manifest: { sha256: string; name: string };
  inputs: TrainingInputRecord[];
  startModel?: TrainingInputRecord;
  /**
   * Fine-tuning: the frozen base model, and what the job let out of the TEE (`adapter`, or
   * `adapter,merged` when the base with the adapter merged in was output, sealed to the base's
   * `kbs` key too; `files` for a command trainer), as the TEE's init-data names them.
   */
  base?: TrainingInputRecord & { outputs: BaseOutputs };
  trainer: TrainerRecord;
  /**
   * `sha256:` + SHA-256 of JCS(trainer): the digest the TEE's init-data names and key policies
   * approve (`init_data.data["cloister.train.trainer"]`); the verifier recomputes it.
   */
  trainerDigest: string;
  /** Whom outputs and checkpoints were sealed to (kbs:/// URIs), as the TEE's init-data names them. */
  recipients: string[];
  hyperparameters: Record<string, unknown>;
  seed: number;
  checkpoints: CheckpointRecord[];
  /** Final metrics (e.g. loss, heldout_loss, accuracy). */
  metrics: Record<string, number>;
  outputs: TrainingOutputRecord[];
  tee: { kind: string; insecure: boolean };
  /** ISO 8601. */
  startedAt: string;
  endedAt: string;
}

/** The predicate of a signed training receipt. */
export interface TrainingPredicate extends TrainingFacts {
  attestation: ReceiptAttestation;
}

export type TrainingStatement = InTotoStatement<TrainingPredicate>;

export type TrainingReceiptErrorCode =
  /** A predicate member is missing or of the wrong type. */
  | 'receipt-shape'
  /** The subjects are not exactly the sealed outputs. */
  | 'receipt-subjects'
  /** The checkpoints do not form the chain 1..n, each naming the previous one's digest. */
  | 'receipt-checkpoints'
  /** The key is bound to another manifest than the predicate's, or than the one expected. */
  | 'receipt-manifest'
  /** The predicate's TEE is not the TEE whose evidence binds the key. */
  | 'receipt-tee'
  /** The verified EAR token's init-data names another training job, or none. */
  | 'receipt-ear-job'
  /** The evidence's init-data field does not hold the digest of this job's init-data. */
  | 'receipt-init-data';

export class TrainingReceiptError extends Error {
  override name = 'TrainingReceiptError';
  constructor(
    readonly code: TrainingReceiptErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** `sha256:` + SHA-256 of JCS(trainer): the trainer's identity in init-data, receipts and policies. */
export async function trainerDigest(trainer: TrainerRecord): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', canonicalizeBytes(trainer).slice()));
  return `sha256:${toHex(d)}`;
}

/** The Statement for a job's facts: one subject per sealed output, named by its file. */
export function buildTrainingStatement(facts: TrainingFacts): InTotoStatement<TrainingFacts> {
  return {
    _type: IN_TOTO_STATEMENT_TYPE,
    subject: facts.outputs.map((o) => ({ name: o.file, digest: { sha256: o.sealedSha256 } })),
    predicateType: TRAINING_PREDICATE_TYPE,
    predicate: facts,
  };
}

/**
 * Signs a job's receipt with its attested key (made by createAttestedSigner with the manifest digest
 * as context); `ear` is the broker's EAR token for the job's attestation, when it has one.
 */
export async function signTrainingReceipt(
  facts: TrainingFacts,
  signer: AttestedSigner,
  options: { ear?: string | null } = {},
): Promise<DsseEnvelope> {
  checkFacts(facts);
  if (signer.attestation.context !== facts.manifest.sha256)
    throw new TrainingReceiptError(
      'receipt-manifest',
      `the receipt key is bound to ${signer.attestation.context}, not to manifest ${facts.manifest.sha256}`,
    );
  return signStatement(buildTrainingStatement(facts), signer, options);
}

export interface VerifyTrainingOptions extends Omit<VerifyAttestedOptions, 'predicateType' | 'context'> {
  /** When given, the receipt must be for this manifest digest (job id, lower-case hex). */
  manifestSha256?: string;
}

export interface VerifiedTrainingReceipt extends VerifiedAttestedEnvelope<TrainingFacts> {
  predicate: TrainingPredicate;
}

/**
 * Verifies a training receipt: everything verifyAttestedEnvelope checks (signature, key binding,
 * evidence, EAR) with the training predicate type, then the predicate's shape, that its subjects
 * are exactly its outputs, that its checkpoints form the chain, that the key is bound to its
 * manifest, that its TEE is the evidence's, and that a verified EAR's init-data names this job.
 */
export async function verifyTrainingReceipt(
  envelope: Uint8Array | string | DsseEnvelope,
  options: VerifyTrainingOptions,
): Promise<VerifiedTrainingReceipt> {
  const { manifestSha256, ...rest } = options;
  const v = await verifyAttestedEnvelope<TrainingFacts>(envelope, {
    ...rest,
    predicateType: TRAINING_PREDICATE_TYPE,
    // The broker's token must have been valid while the job ran (jobs outlast a token's hour).
    earWindow: (s) => ({
      from: new Date(String(s.predicate.startedAt)),
      to: new Date(String(s.predicate.endedAt)),
    }),
    ...(manifestSha256 !== undefined ? { context: fromHex(manifestSha256) } : {}),
  });
  const predicate = v.statement.predicate;
  checkFacts(predicate);
  checkSubjects(v.statement);
  if (toHex(v.context) !== predicate.manifest.sha256)
    throw new TrainingReceiptError(
      'receipt-manifest',
      `the receipt key is bound to ${toHex(v.context)}, but the receipt is about manifest ${predicate.manifest.sha256}`,
    );
  if (predicate.tee.kind !== v.appraisal.kind || predicate.tee.insecure !== !!v.appraisal.insecure)
    throw new TrainingReceiptError(
      'receipt-tee',
      `the receipt says TEE ${predicate.tee.kind}${predicate.tee.insecure ? ' (insecure)' : ''}, its evidence is ${v.appraisal.kind}${v.appraisal.insecure ? ' (insecure)' : ''}`,
    );
  const digest = await trainerDigest(predicate.trainer);
  if (predicate.trainerDigest !== digest)
    throw new TrainingReceiptError(
      'receipt-shape',
      `predicate.trainerDigest is ${predicate.trainerDigest}, but the trainer it records digests to ${digest}`,
    );
  // A merged model (base + adapter) is the one output also sealed to the base's owner.
  const merged = predicate.base?.outputs === 'adapter,merged' ? predicate.base.kbs : undefined;
  for (const o of predicate.outputs)
    for (const r of o.recipients)
      if (!predicate.recipients.includes(r) && !(r === merged && o.file === MERGED_OUTPUT))
        throw new TrainingReceiptError(
          'receipt-shape',
          `output ${o.file} is sealed to ${r}, which is not among the job's recipients`,
        );
  await checkInitData(v.appraisal, predicate);
  if (v.ear) checkEarJob(v.ear, predicate.manifest.sha256);
  return { ...v, predicate };
}

/**
 * Where the TEE kind's evidence has an init-data field (TDX mr_config_id, SEV-SNP and sample
 * host_data), it must hold the digest of the init-data this job launches with: the evidence then
 * itself names the job, the trainer and the recipients, whoever ran the TEE.
 */
async function checkInitData(appraisal: Appraisal, p: TrainingFacts): Promise<void> {
  const field = INIT_DATA_FIELDS[appraisal.kind];
  if (!field) return;
  const body = utf8.encode(
    trainInitData(
      p.manifest.sha256,
      p.trainerDigest,
      p.recipients,
      p.base ? { sha256: p.base.sealedSha256, outputs: p.base.outputs } : undefined,
    ),
  );
  const digest = toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', body.slice())));
  const expected = digest.slice(0, field.bytes * 2).padEnd(field.bytes * 2, '0');
  const got = appraisal.claims[field.claim];
  if (typeof got !== 'string' || got.toLowerCase() !== expected)
    throw new TrainingReceiptError(
      'receipt-init-data',
      `the evidence's ${field.claim} (${typeof got === 'string' ? got : 'absent'}) is not the digest of this job's init-data (${expected}): the TEE was not launched for this job, trainer and recipients`,
    );
}

function checkEarJob(ear: EarResult, job: string): void {
  const init = ear.initData as { data?: Record<string, unknown> } | undefined;
  const named = init?.data?.[INIT_DATA_JOB];
  // The broker released the job's keys to a session whose init-data named the job: its token must say so.
  if (named !== job)
    throw new TrainingReceiptError(
      'receipt-ear-job',
      named === undefined
        ? `the EAR token's init-data names no training job (expected ${job})`
        : `the EAR token's init-data names training job ${String(named)}, not ${job}`,
    );
}

function checkSubjects(statement: InTotoStatement<TrainingFacts>): void {
  const outputs = statement.predicate.outputs;
  const subjects = statement.subject;
  const same =
    subjects.length === outputs.length &&
    subjects.every((s, i) => {
      const keys = Object.keys(s.digest);
      return (
        s.name === outputs[i]!.file &&
        keys.length === 1 &&
        keys[0] === 'sha256' &&
        s.digest.sha256 === outputs[i]!.sealedSha256
      );
    });
  if (!same)
    throw new TrainingReceiptError(
      'receipt-subjects',
      'the subjects are not exactly the sealed outputs (name = file, digest = {sha256: sealedSha256}, in order)',
    );
}

const SHA256 = /^[0-9a-f]{64}$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks the facts' shape (the predicate comes from a file anyone may have written) and the chain. */
export function checkFacts(p: unknown): asserts p is TrainingFacts {
  const bad = (where: string, what: string): never => {
    throw new TrainingReceiptError('receipt-shape', `predicate.${where} must be ${what}`);
  };
  const str = (v: unknown, where: string): void => {
    if (typeof v !== 'string') bad(where, 'a string');
  };
  const sha = (v: unknown, where: string): void => {
    if (typeof v !== 'string' || !SHA256.test(v)) bad(where, 'a SHA-256 in lower-case hex');
  };
  const list = (v: unknown, where: string): unknown[] => (Array.isArray(v) ? v : bad(where, 'a list'));
  const rec = (v: unknown, where: string): Record<string, unknown> =>
    isRecord(v) ? v : bad(where, 'an object');
  const input = (v: unknown, where: string) => {
    const r = rec(v, where);
    str(r.name, `${where}.name`);
    sha(r.sealedSha256, `${where}.sealedSha256`);
    str(r.kbs, `${where}.kbs`);
  };
  const f = rec(p, '(predicate)');
  const m = rec(f.manifest, 'manifest');
  sha(m.sha256, 'manifest.sha256');
  list(f.recipients, 'recipients').forEach((r, i) => {
    str(r, `recipients[${i}]`);
  });
  str(m.name, 'manifest.name');
  for (const [i, x] of list(f.inputs, 'inputs').entries()) input(x, `inputs[${i}]`);
  if (f.startModel !== undefined) input(f.startModel, 'startModel');
  if (f.base !== undefined) {
    input(f.base, 'base');
    const outputs = (f.base as Record<string, unknown>).outputs;
    if (outputs !== 'adapter' && outputs !== 'adapter,merged' && outputs !== 'files')
      bad('base.outputs', '"adapter", "adapter,merged" or "files"');
  }
  const t = rec(f.trainer, 'trainer');
  if (t.kind === 'builtin') {
    str(t.name, 'trainer.name');
    const s = rec(t.software, 'trainer.software');
    for (const k of ['name', 'version', 'digest']) str(s[k], `trainer.software.${k}`);
  } else if (t.kind === 'command') {
    const argv = list(t.argv, 'trainer.argv');
    if (argv.length === 0) bad('trainer.argv', 'a non-empty list');
    for (const [i, a] of argv.entries()) str(a, `trainer.argv[${i}]`);
    const prog = rec(t.program, 'trainer.program');
    str(prog.path, 'trainer.program.path');
    sha(prog.sha256, 'trainer.program.sha256');
    list(t.files, 'trainer.files').forEach((x, i) => {
      const r = rec(x, `trainer.files[${i}]`);
      str(r.path, `trainer.files[${i}].path`);
      sha(r.sha256, `trainer.files[${i}].sha256`);
    });
  } else bad('trainer.kind', '"builtin" or "command"');
  if (typeof f.trainerDigest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(f.trainerDigest))
    bad('trainerDigest', 'sha256:<64 lower-case hex>');
  rec(f.hyperparameters, 'hyperparameters');
  if (!Number.isSafeInteger(f.seed)) bad('seed', 'an integer');
  const cps = list(f.checkpoints, 'checkpoints');
  let prev: string | null = null;
  cps.forEach((x, i) => {
    const c = rec(x, `checkpoints[${i}]`);
    if (!Number.isSafeInteger(c.step) || (c.step as number) < 0)
      bad(`checkpoints[${i}].step`, 'an integer ≥ 0');
    sha(c.sealedSha256, `checkpoints[${i}].sealedSha256`);
    if (c.prev !== null) sha(c.prev, `checkpoints[${i}].prev`);
    if (c.number !== i + 1)
      throw new TrainingReceiptError(
        'receipt-checkpoints',
        `checkpoint ${i + 1} of the chain is numbered ${String(c.number)}: numbers must run 1, 2, … without gaps`,
      );
    if (c.prev !== prev)
      throw new TrainingReceiptError(
        'receipt-checkpoints',
        `checkpoint ${i + 1} names ${String(c.prev)} as its predecessor, but checkpoint ${i} is ${String(prev)}`,
      );
    if (i > 0 && (c.step as number) < ((cps[i - 1] as { step: number }).step ?? 0))
      throw new TrainingReceiptError(
        'receipt-checkpoints',
        `checkpoint ${i + 1} is at step ${String(c.step)}, before checkpoint ${i}'s step`,
      );
    prev = c.sealedSha256 as string;
  });
  const metrics = rec(f.metrics, 'metrics');
  for (const [k, v] of Object.entries(metrics))
    if (typeof v !== 'number' || !Number.isFinite(v)) bad(`metrics.${k}`, 'a finite number');
  const outputs = list(f.outputs, 'outputs');
  // In-toto subjects are the outputs, and a Statement has at least one subject.
  if (outputs.length === 0) bad('outputs', 'a non-empty list');
  outputs.forEach((x, i) => {
    const o = rec(x, `outputs[${i}]`);
    str(o.file, `outputs[${i}].file`);
    sha(o.sealedSha256, `outputs[${i}].sealedSha256`);
    for (const [j, r] of list(o.recipients, `outputs[${i}].recipients`).entries())
      str(r, `outputs[${i}].recipients[${j}]`);
  });
  const tee = rec(f.tee, 'tee');
  str(tee.kind, 'tee.kind');
  if (typeof tee.insecure !== 'boolean') bad('tee.insecure', 'a boolean');
  for (const k of ['startedAt', 'endedAt'] as const)
    if (typeof f[k] !== 'string' || Number.isNaN(Date.parse(f[k] as string))) bad(k, 'an ISO 8601 time');
}
