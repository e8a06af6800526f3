/** Row shapes shared by the SQL backends and their mapping to the store's records. */
import { scopeFromColumns, sessionStatus } from './common.js';
import type {
  AdminTokenRevocation,
  Owner,
  PolicyRecord,
  ReferenceValueRecord,
  ResourceMeta,
  ResourceRecord,
  SessionRecord,
  StoredLogEntry,
  TrainCheckpoint,
  TrainReceiptFacts,
  TrainReceiptRecord,
} from './types.js';

export interface ResourceRow {
  path: string;
  repository: string;
  type: string;
  tag: string;
  tenant: Owner;
  version: number;
  /** PostgreSQL returns BIGINT as a string. */
  size: number | string;
  content_type: string;
  master_key_id: string;
  ciphertext: Uint8Array;
  created_at: string;
  updated_at: string;
}
export interface PolicyRow {
  scope_kind: string;
  scope_target: string;
  version: number;
  tenant: Owner;
  source: string;
  created_at: string;
  actor: string;
}
export interface ReferenceRow {
  id: string;
  tenant: Owner;
  tee: string;
  name: string;
  version: number;
  vals: string;
  created_at: string;
  expires_at: string | null;
  note: string | null;
}
export interface SessionRow {
  id: string;
  tee: string;
  nonce: string;
  status: string;
  expires_at: string;
  token: string | null;
  tee_pubkey: string | null;
}
export interface RevocationRow {
  token_id: string;
  expires_at: string | null;
  revoked_at: string;
  actor: string;
  reason: string | null;
}
export interface EntryRow {
  idx: number | string;
  canonical: Uint8Array;
  leaf_hash: Uint8Array;
}

/** Returned bytes are plain Uint8Arrays, whatever the driver hands back. */
export const bytes = (b: Uint8Array): Uint8Array => new Uint8Array(b);

export function resourceMeta(r: ResourceRow): ResourceMeta {
  return {
    path: r.path,
    repository: r.repository,
    type: r.type,
    tag: r.tag,
    tenant: r.tenant,
    version: r.version,
    size: Number(r.size),
    contentType: r.content_type,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
export function resourceRecord(r: ResourceRow): ResourceRecord {
  return { ...resourceMeta(r), secret: { masterKeyId: r.master_key_id, ciphertext: bytes(r.ciphertext) } };
}
export function policyRecord(r: PolicyRow): PolicyRecord {
  return {
    scope: scopeFromColumns(r.scope_kind, r.scope_target),
    tenant: r.tenant,
    version: r.version,
    source: r.source,
    createdAt: r.created_at,
    actor: r.actor,
  };
}
export function referenceRecord(r: ReferenceRow): ReferenceValueRecord {
  return {
    id: r.id,
    tenant: r.tenant,
    tee: r.tee,
    name: r.name,
    values: JSON.parse(r.vals) as string[],
    version: r.version,
    createdAt: r.created_at,
    ...(r.expires_at !== null && { expiresAt: r.expires_at }),
    ...(r.note !== null && { note: r.note }),
  };
}
export function sessionRecord(r: SessionRow): SessionRecord {
  return {
    id: r.id,
    tee: r.tee,
    nonce: r.nonce,
    status: sessionStatus(r.status),
    expiresAt: r.expires_at,
    ...(r.token !== null && { token: r.token }),
    ...(r.tee_pubkey !== null && { teePubkey: r.tee_pubkey }),
  };
}
export function revocationRecord(r: RevocationRow): AdminTokenRevocation {
  return {
    tokenId: r.token_id,
    ...(r.expires_at !== null && { expiresAt: r.expires_at }),
    revokedAt: r.revoked_at,
    actor: r.actor,
    ...(r.reason !== null && { reason: r.reason }),
  };
}
export function entry(r: EntryRow): StoredLogEntry {
  return { index: Number(r.idx), canonical: bytes(r.canonical), leafHash: bytes(r.leaf_hash) };
}

export interface TrainCheckpointRow {
  /** PostgreSQL returns BIGINT as a string. */
  number: number | string;
  sha256: string;
}
export interface TrainReceiptRow {
  sha256: string;
  job: string;
  log_index: number | string;
  recorded_at: string;
  /** JSON of `receiptFactsJson`. */
  facts: string;
}

export function trainCheckpoint(r: TrainCheckpointRow): TrainCheckpoint {
  return { number: Number(r.number), sha256: r.sha256 };
}

/** The facts stored as JSON in a receipt's row (the job and sha256 have columns of their own). */
export function receiptFactsJson(f: TrainReceiptFacts): string {
  return JSON.stringify({ subjects: f.subjects, trainer: f.trainer, outputs: f.outputs, tee: f.tee });
}

export function trainReceiptRecord(r: TrainReceiptRow): TrainReceiptRecord {
  const facts = JSON.parse(r.facts) as Pick<TrainReceiptFacts, 'subjects' | 'trainer' | 'outputs'> & {
    tee: Omit<TrainReceiptFacts['tee'], 'measurement'> & { measurement?: string };
  };
  return {
    job: r.job,
    sha256: r.sha256,
    subjects: facts.subjects,
    trainer: facts.trainer,
    outputs: facts.outputs,
    // Records from before the measurement was kept show none.
    tee: { ...facts.tee, measurement: facts.tee.measurement ?? '' },
    logIndex: Number(r.log_index),
    recordedAt: r.recorded_at,
  };
}

/** Every distinct recipient of a receipt's outputs. */
export const receiptRecipients = (f: TrainReceiptFacts): string[] => [
  ...new Set(f.outputs.flatMap((o) => o.recipients)),
];
