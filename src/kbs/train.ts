/**
 * The broker's side of confidential training (docs/kbs-protocol.md §8): each job's latest checkpoint,
 * moved only by compare-and-set so that a host cannot feed a job an older checkpoint (rollback) or a
 * different one (fork) without the TEE noticing, and training receipts, recorded by the outputs' key
 * URIs so that a release policy can require one (`receipts`, docs/policy.md). Both are open only to an
 * attested KBS session whose checked init-data names the job: `init_data.data["cloister.train.manifest"]`
 * is the job id, the lower-case hex SHA-256 of the job's manifest.
 */
import type { Appraisal, EarResult } from '../attest/index.js';
import type { PolicyReceipt } from '../policy/index.js';
import { toHex, utf8 } from '../util/index.js';
import {
  IN_TOTO_PAYLOAD_TYPE,
  IN_TOTO_STATEMENT_TYPE,
  INIT_DATA_JOB,
  INIT_DATA_TRAINER,
  TRAINING_PREDICATE_TYPE,
} from '../wire/index.js';
import { KbsError } from './errors.js';
import { initDataOfEar } from './init-data.js';
import type { KbsStore, TrainCheckpoint, TrainReceiptFacts, TrainReceiptRecord } from './store/types.js';

/** Largest receipt (DSSE envelope JSON) accepted. */
export const RECEIPT_MAX_BYTES = 1024 * 1024;
/**
 * Bounds on what a receipt may hold, so every receipt a policy sees fits its input limits
 * (INPUT_LIMITS.maxReceiptOutputs, maxReceiptString).
 */
export const RECEIPT_LIMITS = Object.freeze({
  maxOutputs: 16,
  maxRecipients: 16,
  maxSubjects: 64,
  maxString: 256,
});

const HEX64 = /^[0-9a-f]{64}$/;

/** The job id of a URL: 64 lower-case hex digits. */
export function parseJob(job: string): string {
  if (!HEX64.test(job)) {
    throw new KbsError(
      'bad-job',
      `training job id must be 64 lower-case hex digits (the SHA-256 of the job manifest), got ${JSON.stringify(job.slice(0, 80))}`,
    );
  }
  return job;
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function checkpointOf(v: unknown, where: string): TrainCheckpoint {
  if (!isRecord(v)) throw new KbsError('malformed-request', `${where} must be {number, sha256}`);
  const { number, sha256 } = v;
  if (typeof number !== 'number' || !Number.isSafeInteger(number) || number < 1)
    throw new KbsError('malformed-request', `${where}.number must be an integer ≥ 1`);
  if (typeof sha256 !== 'string' || !HEX64.test(sha256))
    throw new KbsError('malformed-request', `${where}.sha256 must be 64 lower-case hex digits`);
  return { number, sha256 };
}

/** The body of a checkpoint advance: `{prev: {number, sha256} | null, next: {number, sha256}}`. */
export function parseAdvance(body: unknown): { prev: TrainCheckpoint | null; next: TrainCheckpoint } {
  if (!isRecord(body) || !('prev' in body) || !('next' in body))
    throw new KbsError(
      'malformed-request',
      'send {"prev": {number, sha256} | null, "next": {number, sha256}}',
    );
  return {
    prev: body.prev === null ? null : checkpointOf(body.prev, 'prev'),
    next: checkpointOf(body.next, 'next'),
  };
}

const short = (c: TrainCheckpoint) => `${c.number} (sha256 ${c.sha256.slice(0, 12)}…)`;

/** Why an advance from `prev` cannot apply while the broker holds `held`, in words for the runner. */
export function conflictMessage(held: TrainCheckpoint | undefined, prev: TrainCheckpoint | null): string {
  const holds = held
    ? `the broker holds checkpoint ${short(held)} for this job`
    : 'the broker holds no checkpoint for this job';
  if (prev === null) {
    return `${holds}; you offered to start from none: a restart from the beginning (rollback) or a fork`;
  }
  const offered = `you offered to advance from ${short(prev)}`;
  if (!held || held.number < prev.number)
    return `${holds}; ${offered}: a checkpoint this broker never recorded (another broker's, or forged)`;
  if (held.number === prev.number)
    return `${holds}; ${offered}: another checkpoint of the same number (a fork)`;
  return `${holds}; ${offered}: an older checkpoint (rollback) or a fork`;
}

// ---------------------------------------------------------------------------------------------------
// Receipts

const bad = (message: string) => new KbsError('bad-receipt', message);

function str(v: unknown, where: string): string {
  if (typeof v !== 'string') throw bad(`${where} must be a string`);
  if (v.length > RECEIPT_LIMITS.maxString)
    throw bad(`${where} is longer than ${RECEIPT_LIMITS.maxString} characters`);
  return v;
}

/** A SHA-256 as lower-case hex, from `<hex>`, `sha256:<hex>` or an in-toto digest set `{sha256: <hex>}`. */
function sha256Of(v: unknown, where: string): string {
  const s = isRecord(v) ? v.sha256 : v;
  const hex = typeof s === 'string' ? s.replace(/^sha256:/, '').toLowerCase() : undefined;
  if (hex === undefined || !HEX64.test(hex)) throw bad(`${where} must be a SHA-256 (64 hex digits)`);
  return hex;
}

function base64Decode(s: string, where: string): Uint8Array {
  // DSSE writes standard base64; the URL-safe alphabet is accepted as well (its spec allows either).
  const std = s.replace(/-/g, '+').replace(/_/g, '/');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(std)) throw bad(`${where} is not base64`);
  try {
    return Uint8Array.from(atob(std.padEnd(Math.ceil(std.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
  } catch {
    throw bad(`${where} is not base64`);
  }
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch (e) {
    throw bad(`${what} is not JSON: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** What a receipt says, as the broker records it (the TEE and digest of the envelope come from elsewhere). */
export type CheckedReceipt = Omit<TrainReceiptFacts, 'sha256' | 'tee'>;

/**
 * The structural check of a training receipt and the facts the broker records from it; the
 * signature, the key's binding into evidence and that evidence are checked by the ledger's
 * `verifyReceipt` (src/tee/attested-receipt.ts). Checks here: a DSSE envelope `{payloadType: "application/vnd.in-toto+json", payload: base64,
 * signatures: [{sig, keyid?}, …] (at least one)}` whose payload is an in-toto Statement v1 with
 * subjects and the training predicate (TRAINING_PREDICATE_TYPE) whose `manifest.sha256` is the job.
 * The facts read from the predicate (src/tee/training-receipt.ts TrainingFacts): `trainer` (`{kind: "builtin",
 * name, software: {digest}}` or `{kind: "command", program: {path, sha256}}`) and `outputs[]`
 * (`{file, sealedSha256, recipients}`).
 */
export async function checkReceiptEnvelope(envelope: Uint8Array, job: string): Promise<CheckedReceipt> {
  const env = parseJson(envelope, 'the receipt');
  if (!isRecord(env)) throw bad('the receipt must be a DSSE envelope (a JSON object)');
  if (env.payloadType !== IN_TOTO_PAYLOAD_TYPE)
    throw bad(`payloadType must be ${IN_TOTO_PAYLOAD_TYPE}, got ${JSON.stringify(env.payloadType)}`);
  if (typeof env.payload !== 'string') throw bad('payload must be a base64 string');
  const sigs = env.signatures;
  if (!Array.isArray(sigs) || sigs.length === 0) throw bad('signatures must be a non-empty list');
  sigs.forEach((s, i) => {
    if (!isRecord(s) || typeof s.sig !== 'string' || s.sig === '')
      throw bad(`signatures[${i}].sig must be a non-empty string`);
  });
  const statement = parseJson(base64Decode(env.payload, 'payload'), 'the payload');
  if (!isRecord(statement) || statement._type !== IN_TOTO_STATEMENT_TYPE)
    throw bad(`the payload must be an in-toto Statement (_type ${IN_TOTO_STATEMENT_TYPE})`);
  if (statement.predicateType !== TRAINING_PREDICATE_TYPE)
    throw bad(
      `predicateType must be ${TRAINING_PREDICATE_TYPE} (a training receipt), got ${JSON.stringify(statement.predicateType)}`,
    );
  const subjectsIn = statement.subject;
  if (!Array.isArray(subjectsIn) || subjectsIn.length === 0) throw bad('the statement has no subject');
  if (subjectsIn.length > RECEIPT_LIMITS.maxSubjects)
    throw bad(`the statement has more than ${RECEIPT_LIMITS.maxSubjects} subjects`);
  const subjects = subjectsIn.map((s: unknown, i) => {
    if (!isRecord(s)) throw bad(`subject[${i}] must be an object`);
    return { name: str(s.name, `subject[${i}].name`), sha256: sha256Of(s.digest, `subject[${i}].digest`) };
  });
  const p = statement.predicate;
  if (!isRecord(p)) throw bad('the statement has no predicate');
  if (!isRecord(p.manifest)) throw bad('predicate.manifest is missing');
  const manifest = sha256Of(p.manifest.sha256, 'predicate.manifest.sha256');
  if (manifest !== job)
    throw bad(`the receipt is for training job ${manifest}, not ${job} (predicate.manifest.sha256)`);
  return { job, subjects, trainer: trainerOf(p.trainer, p.trainerDigest), outputs: outputsOf(p.outputs) };
}

/**
 * The trainer as policies see it: its kind, its name (built-in) or program, and `trainerDigest`, the
 * digest the TEE's init-data names (`cloister.train.trainer`) and key policies approve.
 */
function trainerOf(t: unknown, digest: unknown): CheckedReceipt['trainer'] {
  if (!isRecord(t)) throw bad('predicate.trainer must be an object');
  if (typeof digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(digest))
    throw bad('predicate.trainerDigest must be sha256:<64 lower-case hex>');
  if (t.kind === 'builtin') return { kind: t.kind, name: str(t.name, 'predicate.trainer.name'), digest };
  if (t.kind === 'command') {
    if (!isRecord(t.program)) throw bad('predicate.trainer.program must be an object');
    return { kind: t.kind, name: str(t.program.path, 'predicate.trainer.program.path'), digest };
  }
  throw bad(`predicate.trainer.kind must be "builtin" or "command", got ${JSON.stringify(t.kind)}`);
}

function outputsOf(o: unknown): CheckedReceipt['outputs'] {
  if (!Array.isArray(o) || o.length === 0) throw bad('predicate.outputs must be a non-empty list');
  if (o.length > RECEIPT_LIMITS.maxOutputs)
    throw bad(`predicate.outputs has more than ${RECEIPT_LIMITS.maxOutputs} entries`);
  return o.map((x: unknown, i) => {
    const where = `predicate.outputs[${i}]`;
    if (!isRecord(x)) throw bad(`${where} must be an object`);
    const recipients = x.recipients;
    if (!Array.isArray(recipients) || recipients.length > RECEIPT_LIMITS.maxRecipients)
      throw bad(`${where}.recipients must be a list of at most ${RECEIPT_LIMITS.maxRecipients} key ids`);
    return {
      file: str(x.file, `${where}.file`),
      sha256: sha256Of(x.sealedSha256, `${where}.sealedSha256`),
      // kbs:/// URIs (what release decisions look receipts up by) and any other key id (hpke:…).
      recipients: recipients.map((r: unknown, j) => str(r, `${where}.recipients[${j}]`)),
    };
  });
}

/** The receipts a release policy sees for a resource (docs/policy.md `receipts`): its outputs only. */
export function policyReceipts(records: TrainReceiptRecord[], uri: string): PolicyReceipt[] {
  return records.map((r) => ({
    job: r.job,
    sha256: r.sha256,
    trainer: { ...r.trainer },
    outputs: r.outputs
      .filter((o) => o.recipients.includes(uri))
      .map((o) => ({ file: o.file, sha256: o.sha256 })),
    tee: { ...r.tee },
    recorded_at: new Date(r.recordedAt),
  }));
}

// ---------------------------------------------------------------------------------------------------
// The endpoints' logic

export interface TrainOptions {
  store: KbsStore;
  /** The attestation result of an attested, live session (a KbsError otherwise). */
  attested: (sessionId: string | undefined) => Promise<EarResult>;
  /** Told of each refused advance (a rollback or fork attempt), for the broker's process log. */
  onRefused?: (job: string, reason: string) => void;
  /**
   * Verifies a receipt's DSSE signature, the binding of its key (with the job id as context) into TEE
   * evidence, and that evidence; answers the evidence's appraisal. A KbsError 'bad-receipt' otherwise.
   */
  verifyReceipt: (envelope: Uint8Array, job: string, kind: string) => Promise<Appraisal>;
}

export class TrainLedger {
  constructor(private readonly o: TrainOptions) {}

  /**
   * The session's attestation, once it is known to be for this job: its checked init-data must name
   * the job. The job id is checked before anything else.
   */
  private async forJob(sessionId: string | undefined, job: string): Promise<EarResult> {
    parseJob(job);
    const ear = await this.o.attested(sessionId);
    const data = initDataOfEar(ear)?.data;
    const named = isRecord(data) ? data[INIT_DATA_JOB] : undefined;
    if (named === undefined) {
      throw new KbsError(
        'job-not-bound',
        `this session's attestation carries no init-data naming a training job: launch the TEE with init-data whose data["${INIT_DATA_JOB}"] is the job id, and send it when attesting`,
      );
    }
    if (named !== job) {
      throw new KbsError(
        'job-not-bound',
        `this session's init-data names training job ${String(named).slice(0, 80)}, not ${job}`,
      );
    }
    return ear;
  }

  /** GET …/checkpoint: the job's latest checkpoint, or undefined before the first. */
  async latest(sessionId: string | undefined, job: string): Promise<TrainCheckpoint | undefined> {
    await this.forJob(sessionId, job);
    return this.o.store.trainCheckpoint(job);
  }

  /**
   * POST …/checkpoint: moves the job from `prev` to `next` if the broker holds exactly `prev` and
   * `next` is the one after it; answers the checkpoint now held. Asked again for an advance it already
   * made (a retry after a lost answer), it answers the same without logging it twice.
   */
  async advance(sessionId: string | undefined, job: string, body: unknown): Promise<TrainCheckpoint> {
    const ear = await this.forJob(sessionId, job);
    const { prev, next } = parseAdvance(body);
    const expected = (prev?.number ?? 0) + 1;
    const refuse = (reason: string): never => {
      this.o.onRefused?.(job, reason);
      throw new KbsError('checkpoint-conflict', reason);
    };
    if (next.number !== expected)
      refuse(`next.number must be ${expected} (one more than prev's), got ${next.number}`);
    const r = await this.o.store.advanceTrainCheckpoint(job, prev, next, {
      kind: 'train-checkpoint',
      tenant: null,
      actor: 'tee',
      subject: `train:${job}`,
      details: { job, number: next.number, sha256: next.sha256, prev, tee: teeOf(ear).kind },
    });
    if (r.advanced) return next;
    const held = r.held;
    if (held && held.number === next.number && held.sha256 === next.sha256) return held;
    return refuse(conflictMessage(held, prev));
  }

  /**
   * POST …/receipt: records a training receipt (the envelope's bytes as sent) and logs it; answers its
   * log index and SHA-256. The same receipt appended again answers the first record.
   */
  async appendReceipt(
    sessionId: string | undefined,
    job: string,
    envelope: Uint8Array,
  ): Promise<{ logIndex: number; sha256: string }> {
    const ear = await this.forJob(sessionId, job);
    if (envelope.length > RECEIPT_MAX_BYTES) throw bad(`the receipt is over ${RECEIPT_MAX_BYTES} bytes`);
    const checked = await checkReceiptEnvelope(envelope, job);
    const tee = teeOf(ear);
    const appraisal = await this.o.verifyReceipt(envelope, job, tee.kind);
    // The receipt must come from the TEE this session attested: same kind, same launch measurement,
    // and the trainer its init-data named (what key policies approved when they released the keys).
    const measurement = (c: Record<string, unknown> | undefined) => c?.measurement ?? c?.mr_td;
    if (
      appraisal.kind !== tee.kind ||
      JSON.stringify(measurement(appraisal.claims)) !== JSON.stringify(measurement(ear.submods.cpu0?.claims))
    )
      throw bad(
        `the receipt was signed in another TEE (${appraisal.kind}) than the one this session attested`,
      );
    const named = initDataOfEar(ear)?.data;
    const trainer = isRecord(named) ? named[INIT_DATA_TRAINER] : undefined;
    if (trainer !== undefined && trainer !== checked.trainer.digest)
      throw bad(
        `the receipt's trainer ${checked.trainer.digest} is not the one the TEE was launched for (${String(trainer)})`,
      );
    const sha256 = toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', envelope.slice())));
    const facts: TrainReceiptFacts = { ...checked, sha256, tee };
    const recipients = [...new Set(facts.outputs.flatMap((o) => o.recipients))];
    const { record } = await this.o.store.addTrainReceipt(facts, envelope, {
      kind: 'train-receipt',
      tenant: null,
      actor: 'tee',
      subject: `train:${job}`,
      details: {
        job,
        sha256,
        subjects: facts.subjects,
        trainer: facts.trainer,
        recipients,
        tee: facts.tee,
      },
    });
    return { logIndex: record.logIndex, sha256 };
  }
}

/** The TEE of a session, from its attestation result's CPU submodule. */
function teeOf(ear: EarResult): TrainReceiptFacts['tee'] {
  const cpu = ear.submods.cpu0;
  const kind = cpu?.kind ?? '';
  return { kind, insecure: cpu?.insecure === true || kind === 'sample', status: cpu?.status ?? 'none' };
}
