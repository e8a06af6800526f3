/**
 * The broker's side of confidential training (docs/kbs-protocol.md §8): each job's latest checkpoint,
 * moved only by compare-and-set so that a host cannot feed a job an older checkpoint (rollback) or a
 * different one (fork) without the TEE noticing, and training receipts, recorded by the outputs' key
 * URIs so that a release policy can require one (`receipts`, docs/policy.md), and each job's
 * checkpoint MAC key. All are open only to an attested KBS session whose checked init-data names the
 * job (`init_data.data["cloister.train.manifest"]`: the job id, the lower-case hex SHA-256 of the
 * job's manifest), its trainer (`cloister.train.trainer`) and its recipients
 * (`cloister.train.recipients`).
 *
 * A receipt is what a later release of a recipient's key may stand on, so recording one is judged
 * like releasing those keys: the receipt must come from the attested TEE that appends it (its own
 * evidence, of the same identity), say what that TEE was launched for (trainer, recipients), and the
 * appending TEE must be one that every kbs:/// recipient's own policy would give its key to without
 * any receipt. Otherwise any attested TEE could plant a receipt naming someone else's key.
 */
import type { FlattenedJWE } from 'jose';
import type { Appraisal, EarResult } from '../attest/index.js';
import type { PolicyReceipt } from '../policy/index.js';
import { canonicalizeBytes, toHex, utf8 } from '../util/index.js';
import {
  IN_TOTO_PAYLOAD_TYPE,
  IN_TOTO_STATEMENT_TYPE,
  INIT_DATA_JOB,
  INIT_DATA_RECIPIENTS,
  INIT_DATA_TRAINER,
  type TeePubkey,
  TRAINING_PREDICATE_TYPE,
} from '../wire/index.js';
import { KbsError } from './errors.js';
import { initDataOfEar } from './init-data.js';
import { encryptResource } from './jwe.js';
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

/**
 * The highest checkpoint number a job may reach: a checkpoint every second for eleven days, far more
 * than a job takes, and a bound on the log entries one job can add.
 */
export const MAX_CHECKPOINT_NUMBER = 1_000_000;
/** Largest checkpoint advance body accepted (two `{number, sha256}` need about 200 bytes). */
export const CHECKPOINT_BODY_MAX_BYTES = 4096;
/**
 * The HKDF info of the key, derived from the broker's current master key, under which each job's
 * checkpoint MAC key is the HMAC-SHA-256 of its job id (SecretBox.derive).
 */
export const TRAIN_KEY_LABEL = 'cloister-kbs train-checkpoint-mac v1';

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
  if (number > MAX_CHECKPOINT_NUMBER)
    throw new KbsError(
      'malformed-request',
      `${where}.number is over ${MAX_CHECKPOINT_NUMBER}, the most checkpoints a job may take`,
    );
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

/** What a receipt says, as the broker records it (the TEE comes from the session). */
export type CheckedReceipt = Omit<TrainReceiptFacts, 'tee'>;

/**
 * The structural check of a training receipt and the facts the broker records from it; the
 * signature, the key's binding into evidence and that evidence are checked by the ledger's
 * `verifyReceipt` (src/tee/training-receipt.ts). Checks here: a DSSE envelope `{payloadType: "application/vnd.in-toto+json", payload: base64,
 * signatures: [{sig, keyid?}, …] (at least one)}` whose payload is an in-toto Statement v1 with
 * subjects and the training predicate (TRAINING_PREDICATE_TYPE) whose `manifest.sha256` is the job.
 * The facts read from the predicate (src/tee/training-receipt.ts TrainingFacts): `trainer` (`{kind: "builtin",
 * name, software: {digest}}` or `{kind: "command", program: {path, sha256}}`) and `outputs[]`
 * (`{file, sealedSha256, recipients}`). `sha256` is the SHA-256 of the Statement (the decoded payload):
 * what the receipt is known by, whatever envelope carries it.
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
  const payload = base64Decode(env.payload, 'payload');
  const statement = parseJson(payload, 'the payload');
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
  const trainer = trainerOf(p.trainer, p.trainerDigest);
  const outputs = outputsOf(p.outputs);
  const sha256 = toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', payload.slice())));
  return { job, sha256, subjects, trainer, outputs };
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
// The TEE a receipt comes from

/**
 * Claims that fix what a TEE is: launch and runtime measurements, launch configuration (the init-data
 * digest fields, owner fields), enclave identity and the debug/policy attributes, for every kind
 * Cloister verifies (src/attest/*: tdx, snp, sgx, sample; Azure's nest the hardware's under `snp` or
 * `tdx`). Two evidence documents of one TEE agree on all of them; nonces, report data, TCB levels and
 * certificates may differ and are not compared.
 */
const IDENTITY_CLAIMS: readonly string[] = [
  // SEV-SNP, sample
  'measurement',
  'host_data',
  'policy',
  'family_id',
  'image_id',
  'id_key_digest',
  'author_key_digest',
  'debug',
  // TDX
  'mr_td',
  'mr_config_id',
  'mr_owner',
  'mr_owner_config',
  'mr_servicetd',
  'rtmr0',
  'rtmr1',
  'rtmr2',
  'td_attributes',
  'xfam',
  // SGX
  'mr_enclave',
  'mr_signer',
  'isv_prod_id',
  'isv_svn',
  'attributes',
  'misc_select',
  'config_id',
  'config_svn',
];
/**
 * Azure vTPM PCRs compared: 0–7, the firmware and boot chain, fixed once the VM has booted (later
 * PCRs may be extended while it runs).
 */
const AZURE_BOOT_PCRS = 8;

/** Where each kind's launch measurement is among its identity claims (`identityOf`). */
const LAUNCH_MEASUREMENT: Readonly<Record<string, string>> = {
  sample: 'measurement',
  snp: 'measurement',
  tdx: 'mr_td',
  sgx: 'mr_enclave',
  'az-snp-vtpm': 'snp.measurement',
  'az-tdx-vtpm': 'tdx.mr_td',
};

/** A TEE's identity claims, flattened (`snp.measurement`, `tpm.pcrs.0`), hex compared in lower case. */
export function identityOf(claims: Record<string, unknown> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const canon = (v: unknown) => (typeof v === 'string' ? v.toLowerCase() : JSON.stringify(v));
  const pick = (c: Record<string, unknown>, prefix: string) => {
    for (const k of IDENTITY_CLAIMS) if (c[k] !== undefined) out[prefix + k] = canon(c[k]);
  };
  if (!claims) return out;
  pick(claims, '');
  for (const hw of ['snp', 'tdx']) {
    const nested = claims[hw];
    if (isRecord(nested)) pick(nested, `${hw}.`);
  }
  const pcrs = isRecord(claims.tpm) && isRecord(claims.tpm.pcrs) ? claims.tpm.pcrs : undefined;
  for (let i = 0; pcrs && i < AZURE_BOOT_PCRS; i++)
    if (pcrs[String(i)] !== undefined) out[`tpm.pcrs.${i}`] = canon(pcrs[String(i)]);
  return out;
}

/** The identity claims on which two TEEs differ, a claim one has and the other lacks included. */
export function identityMismatch(
  a: Record<string, unknown> | undefined,
  b: Record<string, unknown> | undefined,
): string[] {
  const x = identityOf(a);
  const y = identityOf(b);
  return [...new Set([...Object.keys(x), ...Object.keys(y)])].filter((k) => x[k] !== y[k]).sort();
}

/** A kind's launch measurement as lower-case hex, '' when it has none (or it is not hex). */
export function launchMeasurement(kind: string, claims: Record<string, unknown> | undefined): string {
  const name = LAUNCH_MEASUREMENT[kind];
  const v = name ? identityOf(claims)[name] : undefined;
  return v !== undefined && /^(?:[0-9a-f]{2})+$/.test(v) ? v : '';
}

/** The TEE of a session, from its attestation result's CPU submodule. */
function teeOf(ear: EarResult): TrainReceiptFacts['tee'] {
  const cpu = ear.submods.cpu0;
  const kind = cpu?.kind ?? '';
  return {
    kind,
    insecure: cpu?.insecure === true || kind === 'sample',
    status: cpu?.status ?? 'none',
    measurement: launchMeasurement(kind, cpu?.claims),
  };
}

// ---------------------------------------------------------------------------------------------------
// The endpoints' logic

/** An attested session of a job: its attestation, TEE key and what its init-data binds it to. */
export interface JobSession {
  ear: EarResult;
  teePubkey: TeePubkey;
  /** The trainer digest its init-data names (`sha256:<hex>`). */
  trainer: string;
  /** The recipients its init-data names (kbs:/// URIs). */
  recipients: string[];
}

export interface TrainOptions {
  store: KbsStore;
  /** The attestation result and TEE key of an attested, live session (a KbsError otherwise). */
  attested: (sessionId: string | undefined) => Promise<{ ear: EarResult; teePubkey: TeePubkey }>;
  /** Told of each refused advance (a rollback or fork attempt), for the broker's process log. */
  onRefused?: (job: string, reason: string) => void;
  /**
   * Verifies a training receipt in full (src/tee/training-receipt.ts verifyTrainingReceipt: the DSSE
   * signature, the key's binding to the job into TEE evidence, that evidence, the recomputed trainer
   * digest, subjects = outputs, the checkpoint chain); answers the evidence's appraisal. `kind`: the
   * session's TEE kind (for its trust anchors). A KbsError 'bad-receipt' otherwise.
   */
  verifyReceipt: (envelope: Uint8Array, job: string, kind: string) => Promise<Appraisal>;
  /**
   * Whether the key at `uri` (a kbs:/// URI) would be released to this attestation by the same
   * decision as GET /kbs/v0/resource, with no receipts in the policy input: undefined if so, else the
   * refusal, which it has logged as a denial in the resource owner's log.
   */
  releasable: (ear: EarResult, uri: string, job: string) => Promise<string | undefined>;
  /** The job's 32-byte checkpoint MAC key (the same on every replica and after a restart). */
  /** The job's checkpoint MAC key for one launch configuration (job, trainer, recipients). */
  checkpointKey: (launch: Uint8Array) => Promise<Uint8Array>;
}

const notBound = (message: string) => new KbsError('job-not-bound', message);

export class TrainLedger {
  constructor(private readonly o: TrainOptions) {}

  /**
   * The session, once it is known to be for this job: its checked init-data must name the job, a
   * trainer and the recipients. The job id is checked before anything else.
   */
  private async forJob(sessionId: string | undefined, job: string): Promise<JobSession> {
    parseJob(job);
    const { ear, teePubkey } = await this.o.attested(sessionId);
    const data = initDataOfEar(ear)?.data;
    const named = isRecord(data) ? data : {};
    const jobNamed = named[INIT_DATA_JOB];
    if (jobNamed === undefined) {
      throw notBound(
        `this session's attestation carries no init-data naming a training job: launch the TEE with init-data whose data["${INIT_DATA_JOB}"] is the job id, and send it when attesting`,
      );
    }
    if (jobNamed !== job)
      throw notBound(
        `this session's init-data names training job ${String(jobNamed).slice(0, 80)}, not ${job}`,
      );
    const trainer = named[INIT_DATA_TRAINER];
    if (typeof trainer !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(trainer))
      throw notBound(
        `this session's init-data names no trainer: data["${INIT_DATA_TRAINER}"] must be the trainer digest (sha256:<hex>), as \`cloister train JOB --print-init-data\` prints it`,
      );
    const recipients = recipientsOf(named[INIT_DATA_RECIPIENTS]);
    if (!recipients || recipients.length === 0 || !recipients.every((r) => r.startsWith('kbs:///')))
      throw notBound(
        `this session's init-data names no recipients: data["${INIT_DATA_RECIPIENTS}"] must be a non-empty JSON array of the kbs:/// URIs the outputs are sealed to`,
      );
    return { ear, teePubkey, trainer, recipients };
  }

  /**
   * The session may act for the job only if every recipient's key would be released to it: whoever
   * a key's owner trusts with the key may seal checkpoints and outputs to it, move the job's counter
   * and record its receipt; a TEE no owner trusts gets nothing, even with the job's init-data.
   * Refusals go into each owner's log, as a refused release does.
   */
  private async trusted(session: JobSession, job: string): Promise<void> {
    const refusals: string[] = [];
    for (const uri of session.recipients) {
      const refused = await this.o.releasable(session.ear, uri, job);
      if (refused !== undefined) refusals.push(refused);
    }
    if (refusals.length > 0) throw new KbsError('recipient-denied', refusals.join('; '));
  }

  /** GET …/checkpoint: the job's latest checkpoint, or undefined before the first. */
  async latest(sessionId: string | undefined, job: string): Promise<TrainCheckpoint | undefined> {
    await this.forJob(sessionId, job);
    return this.o.store.trainCheckpoint(job);
  }

  /**
   * GET …/key: the job's checkpoint MAC key (32 bytes), encrypted to the session's TEE key as a
   * resource is (a flattened JWE). Only the job's attested sessions get it, so whoever holds a
   * recipient's key can decrypt a checkpoint but cannot make one the job would resume from.
   */
  async checkpointKey(sessionId: string | undefined, job: string): Promise<FlattenedJWE> {
    const session = await this.forJob(sessionId, job);
    await this.trusted(session, job);
    const { teePubkey, trainer, recipients } = session;
    // Another trainer or other recipients get another key, so their checkpoints never verify here.
    const key = await this.o.checkpointKey(canonicalizeBytes({ job, trainer, recipients }));
    try {
      return await encryptResource(key, teePubkey);
    } finally {
      key.fill(0);
    }
  }

  /**
   * POST …/checkpoint: moves the job from `prev` to `next` if the broker holds exactly `prev` and
   * `next` is the one after it; answers the checkpoint now held. Asked again for an advance it already
   * made (a retry after a lost answer), it answers the same without logging it twice.
   */
  async advance(sessionId: string | undefined, job: string, body: unknown): Promise<TrainCheckpoint> {
    const session = await this.forJob(sessionId, job);
    await this.trusted(session, job);
    const { ear } = session;
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
   * POST …/receipt: records the job's training receipt and logs it; answers its log index and the
   * SHA-256 of its Statement. A job has one receipt: the same Statement again answers the first
   * record; another is `409 receipt-exists`. Refused unless the receipt verifies in full, comes from
   * a TEE of the session's identity, names the trainer and only recipients the session's init-data
   * names, and every kbs:/// recipient's key would be released to this session without receipts.
   */
  async appendReceipt(
    sessionId: string | undefined,
    job: string,
    envelope: Uint8Array,
  ): Promise<{ logIndex: number; sha256: string }> {
    const session = await this.forJob(sessionId, job);
    const { ear } = session;
    if (envelope.length > RECEIPT_MAX_BYTES) throw bad(`the receipt is over ${RECEIPT_MAX_BYTES} bytes`);
    const checked = await checkReceiptEnvelope(envelope, job);
    const first = await this.o.store.trainReceiptOfJob(job);
    if (first) return this.same(first, checked.sha256);

    if (checked.trainer.digest !== session.trainer)
      throw notBound(
        `the receipt's trainer ${checked.trainer.digest} is not the one this TEE was launched for (its init-data names ${session.trainer})`,
      );
    const recipients = [...new Set(checked.outputs.flatMap((o) => o.recipients))];
    const unnamed = recipients.filter((r) => !session.recipients.includes(r));
    if (unnamed.length > 0)
      throw notBound(
        `the receipt's outputs are sealed to ${unnamed.join(', ')}, which this TEE's init-data does not name as a recipient (it names ${session.recipients.join(', ') || 'none'})`,
      );

    const tee = teeOf(ear);
    const appraisal = await this.o.verifyReceipt(envelope, job, tee.kind);
    if (appraisal.status === 'contraindicated')
      throw bad(
        `the receipt's evidence is contraindicated: ${appraisal.findings
          .filter((f) => f.status === 'contraindicated')
          .map((f) => f.message)
          .join('; ')}`,
      );
    // The receipt must come from the TEE this session attested: same kind, same identity.
    if (appraisal.kind !== tee.kind)
      throw bad(`the receipt was signed in a ${appraisal.kind} TEE, this session attested a ${tee.kind} TEE`);
    const differ = identityMismatch(appraisal.claims, ear.submods.cpu0?.claims);
    if (differ.length > 0)
      throw bad(
        `the receipt was signed in another TEE than the one this session attested (${differ.join(', ')} differ)`,
      );

    // Whoever may record a receipt naming a key is whoever that key's owner would give the key to.
    await this.trusted(session, job);

    const facts: TrainReceiptFacts = { ...checked, tee };
    const { record, created } = await this.o.store.addTrainReceipt(facts, envelope, {
      kind: 'train-receipt',
      tenant: null,
      actor: 'tee',
      subject: `train:${job}`,
      details: {
        job,
        sha256: facts.sha256,
        subjects: facts.subjects,
        trainer: facts.trainer,
        recipients,
        tee: facts.tee,
      },
    });
    // Another session of the job recorded one in the meantime.
    if (!created) return this.same(record, facts.sha256);
    return { logIndex: record.logIndex, sha256: record.sha256 };
  }

  /** The job's receipt is `record`: this one again answers it, another is refused. */
  private same(record: TrainReceiptRecord, sha256: string): { logIndex: number; sha256: string } {
    if (record.sha256 !== sha256)
      throw new KbsError(
        'receipt-exists',
        `this job already has a receipt (sha256 ${record.sha256}, log entry ${record.logIndex}); a job has one receipt`,
      );
    return { logIndex: record.logIndex, sha256: record.sha256 };
  }
}

/** The recipients init-data names: a JSON array of strings (as trainInitData writes it), else undefined. */
function recipientsOf(v: unknown): string[] | undefined {
  if (typeof v !== 'string') return undefined;
  let list: unknown;
  try {
    list = JSON.parse(v);
  } catch {
    return undefined;
  }
  return Array.isArray(list) && list.every((r) => typeof r === 'string') ? list : undefined;
}
