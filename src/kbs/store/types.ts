/**
 * The key broker's repository interface. Two backends implement it — SQLite (embedded default, WAL)
 * and PostgreSQL (several replicas at once) — plus a memory store for unit tests. Every mutation that
 * the transparency log must record takes the log entry fields and appends them in the SAME transaction
 * (see `LogAppend`), so a change and its log entry commit or roll back together.
 */

/** A resource value as stored: encrypted under the master key (envelope), never in plaintext. */
export interface SealedSecret {
  /** Master key id that encrypted `ciphertext` (rotation re-encrypts under a new id). */
  masterKeyId: string;
  /** AES-256-GCM nonce ‖ ciphertext ‖ tag; AAD = resource URI ‖ version (see secrets.ts). */
  ciphertext: Uint8Array;
}

/**
 * The owner of a repository, policy or reference value: a tenant's name, or null for the operator (what
 * admins own; broker-wide policies and reference values). The operator is never written as a reserved
 * name, so no tenant can be taken for it, and a query for a tenant never matches the operator's rows.
 */
export type Owner = string | null;

export interface ResourceMeta {
  /** `<repository>/<type>/<tag>` */
  path: string;
  repository: string;
  type: string;
  tag: string;
  /** The repository's owner (null: the operator). */
  tenant: Owner;
  /** Starts at 1; every rotate makes a new version. */
  version: number;
  /** Byte length of the plaintext value (metadata only; values are never returned by the admin API). */
  size: number;
  contentType: string;
  createdAt: string;
  updatedAt: string;
}

export interface ResourceRecord extends ResourceMeta {
  secret: SealedSecret;
}

export type PolicyScope =
  | { kind: 'resource'; path: string }
  | { kind: 'repository'; repository: string }
  | { kind: 'default' };

export interface PolicyRecord {
  scope: PolicyScope;
  /** Owner of the scope's repository; null for the operator (the broker-wide `default` scope included). */
  tenant: Owner;
  version: number;
  /** CEL source. */
  source: string;
  createdAt: string;
  actor: string;
}

export interface ReferenceValueRecord {
  id: string;
  /** null: operator-wide, applied to every tenant's releases. */
  tenant: Owner;
  tee: string;
  /** Claim name, e.g. mr_td, measurement, mr_enclave. */
  name: string;
  values: string[];
  version: number;
  createdAt: string;
  expiresAt?: string;
  note?: string;
}

/** What a reference value's versions share: its owner, TEE kind and claim name. */
export interface ReferenceValueSet {
  tenant: Owner;
  tee: string;
  name: string;
}

/** A revoked admin token, by its `jti`. */
export interface AdminTokenRevocation {
  tokenId: string;
  /** The token's `exp` as an ISO time, when known: after it the revocation changes nothing. */
  expiresAt?: string;
  revokedAt: string;
  actor: string;
  reason?: string;
}

export type SessionStatus = 'challenged' | 'attested';

/** A KBS protocol session; shared by all replicas through the store. */
export interface SessionRecord {
  id: string;
  tee: string;
  /** base64 of the 32-byte nonce of the challenge. */
  nonce: string;
  status: SessionStatus;
  /** ISO time after which the session is refused. */
  expiresAt: string;
  /** EAR token and the TEE's ephemeral public key (JWK JSON) once attested. */
  token?: string;
  teePubkey?: string;
}

/** A training job's latest checkpoint as the broker holds it (compare-and-set, see advanceTrainCheckpoint). */
export interface TrainCheckpoint {
  /** 1 for the first checkpoint, then one more per advance. */
  number: number;
  /** Lower-case hex SHA-256 of the sealed checkpoint. */
  sha256: string;
}

/** What `advanceTrainCheckpoint` did: moved the job on, or found another checkpoint held (none: undefined). */
export type CheckpointAdvance = { advanced: true } | { advanced: false; held: TrainCheckpoint | undefined };

/** A training receipt's facts as the broker recorded them (src/kbs/train.ts reads them from the envelope). */
export interface TrainReceiptFacts {
  /** The training job: lower-case hex SHA-256 of its manifest. */
  job: string;
  /**
   * Lower-case hex SHA-256 of the receipt's Statement (the DSSE payload, decoded): the same facts
   * signed again, or sent in another envelope encoding, are the same receipt.
   */
  sha256: string;
  /** The in-toto Statement's subjects (the sealed outputs): name and SHA-256 (hex). */
  subjects: { name: string; sha256: string }[];
  trainer: { kind: string; name: string; digest: string };
  /** Every output with the kbs:/// URIs of the keys it is sealed to. */
  outputs: { file: string; sha256: string; recipients: string[] }[];
  /**
   * The TEE of the attested session that appended it (its EAR's cpu0); `measurement`: its launch
   * measurement as lower-case hex ('' when the kind has none; records made before it was kept: '').
   */
  tee: { kind: string; insecure: boolean; status: string; measurement: string };
}

/** A recorded training receipt. */
export interface TrainReceiptRecord extends TrainReceiptFacts {
  /** Index of its `train-receipt` entry in the transparency log. */
  logIndex: number;
  recordedAt: string;
}

/** The fields of a transparency-log entry that the store appends in the same transaction. */
/**
 * A repository-assign entry with the owner it had (known only inside the store's transaction), so the
 * log alone says who lost the repository as well as who got it.
 */
export function withFrom(log: LogAppend, from: Owner): LogAppend {
  return { ...log, details: { ...log.details, from } };
}

export interface LogAppend {
  kind: string;
  /** null for the operator (the entry records it as '', the log format's "no tenant"). */
  tenant: Owner;
  actor: string;
  subject: string;
  details: Record<string, unknown>;
}

/** A stored log entry: the canonical bytes and their leaf hash, as the transparency log computed them. */
export interface StoredLogEntry {
  index: number;
  /** RFC 8785 canonical JSON of the entry. */
  canonical: Uint8Array;
  leafHash: Uint8Array;
}

/**
 * Builds the log entry to append: given the previous entry's leaf hash (or undefined for the first
 * entry) and the next index, returns the canonical bytes and leaf hash. Supplied by the key broker; the
 * store calls it inside its transaction after locking the log head. Synchronous, because SQLite
 * transactions (better-sqlite3) cannot span an await.
 */
export type LogEntryBuilder = (
  index: number,
  prevLeafHash: Uint8Array | undefined,
  fields: LogAppend,
) => { canonical: Uint8Array; leafHash: Uint8Array };

export interface KbsStore {
  /** Creates tables if needed; idempotent. */
  migrate(): Promise<void>;
  close(): Promise<void>;

  // tenants and repositories
  createRepository(repository: string, tenant: Owner, log: LogAppend): Promise<void>;
  /** undefined: no such repository; otherwise who owns it. */
  repositoryOwner(repository: string): Promise<{ tenant: Owner } | undefined>;
  /**
   * Gives a repository to another owner, with its resources and the policies of its scopes, in one
   * transaction; returns the previous owner. NotFoundError when it does not exist, ConflictError when
   * `tenant` already owns it (nothing is logged then).
   */
  assignRepository(repository: string, tenant: Owner, log: LogAppend): Promise<{ from: Owner }>;

  // resources
  putResource(
    rec: Omit<ResourceRecord, 'version' | 'createdAt' | 'updatedAt'>,
    log: LogAppend,
  ): Promise<ResourceMeta>;
  /** Replaces the value with a new version; throws NotFound when absent. */
  rotateResource(path: string, secret: SealedSecret, size: number, log: LogAppend): Promise<ResourceMeta>;
  deleteResource(path: string, log: LogAppend): Promise<boolean>;
  getResource(path: string): Promise<ResourceRecord | undefined>;
  listResources(tenant?: string): Promise<ResourceMeta[]>;
  /** Re-encrypts every secret (master-key rotation), in one transaction. */
  reencryptSecrets(fn: (rec: ResourceRecord) => Promise<SealedSecret>, log: LogAppend): Promise<number>;

  // policies (latest version per scope is the active one)
  setPolicy(rec: Omit<PolicyRecord, 'version' | 'createdAt'>, log: LogAppend): Promise<PolicyRecord>;
  getPolicy(scope: PolicyScope): Promise<PolicyRecord | undefined>;
  listPolicies(tenant?: string): Promise<PolicyRecord[]>;
  /**
   * Deletes every version of a scope's policy, so the next scope's applies (resource → repository →
   * default → built-in); returns how many versions went. 0: there was none, and nothing is logged.
   */
  deletePolicy(scope: PolicyScope, log: LogAppend): Promise<number>;

  // reference values (versioned per tenant+tee+name)
  addReferenceValue(
    rec: Omit<ReferenceValueRecord, 'id' | 'version' | 'createdAt'>,
    log: LogAppend,
  ): Promise<ReferenceValueRecord>;
  /** `tenant`: undefined lists every owner's, null only the operator's, a name only that tenant's. */
  listReferenceValues(filter?: { tenant?: Owner; tee?: string }): Promise<ReferenceValueRecord[]>;
  /**
   * Deletes every version of one owner's (tee, name) set, so that claim is no longer checked for it;
   * returns how many versions went. 0: there was none, and nothing is logged.
   */
  deleteReferenceValues(set: ReferenceValueSet, log: LogAppend): Promise<number>;

  // admin-token revocations
  /** Records a revocation; revoking an id twice is a ConflictError. */
  revokeAdminToken(
    rec: Omit<AdminTokenRevocation, 'revokedAt'>,
    log: LogAppend,
  ): Promise<AdminTokenRevocation>;
  isAdminTokenRevoked(tokenId: string): Promise<boolean>;
  listAdminTokenRevocations(): Promise<AdminTokenRevocation[]>;

  // sessions
  createSession(s: SessionRecord): Promise<void>;
  getSession(id: string): Promise<SessionRecord | undefined>;
  /** Moves a challenged session to attested exactly once (compare-and-set); false if it was not challenged. */
  markAttested(id: string, token: string, teePubkey: string): Promise<boolean>;
  deleteExpiredSessions(now: string): Promise<number>;

  // confidential training (src/kbs/train.ts)
  /** The job's latest checkpoint; undefined before the first. */
  trainCheckpoint(job: string): Promise<TrainCheckpoint | undefined>;
  /**
   * Compare-and-set: moves the job from `prev` (null: no checkpoint yet) to `next` and logs it, in one
   * transaction, only if the job's latest checkpoint is exactly `prev`; otherwise changes nothing and
   * says what is held. The caller checks that `next` follows `prev`.
   */
  advanceTrainCheckpoint(
    job: string,
    prev: TrainCheckpoint | null,
    next: TrainCheckpoint,
    log: LogAppend,
  ): Promise<CheckpointAdvance>;
  /**
   * Records a receipt and appends its log entry in one transaction; a job has one receipt. When the
   * job already has one (the same receipt or another), nothing is recorded or logged: the job's
   * receipt comes back with `created: false` and the caller compares its sha256.
   */
  addTrainReceipt(
    facts: TrainReceiptFacts,
    envelope: Uint8Array,
    log: LogAppend,
  ): Promise<{ record: TrainReceiptRecord; created: boolean }>;
  /** Receipts with an output sealed to `recipient` (a kbs:/// URI), newest first, at most `limit`. */
  trainReceiptsFor(recipient: string, limit: number): Promise<TrainReceiptRecord[]>;
  /** A job's receipt (the first recorded, should a database hold several from before one per job). */
  trainReceiptOfJob(job: string): Promise<TrainReceiptRecord | undefined>;
  /** One receipt and its envelope's bytes, by its Statement's SHA-256 (hex). */
  trainReceipt(sha256: string): Promise<{ record: TrainReceiptRecord; envelope: Uint8Array } | undefined>;

  // transparency log
  /** Appends an entry that records no other change (a release, a denial). */
  appendLog(log: LogAppend): Promise<StoredLogEntry>;
  logSize(): Promise<number>;
  logEntries(from: number, to: number): Promise<StoredLogEntry[]>;
  /**
   * Stored subtree hashes of the log (level ≥ 1: the 2^level entries from index·2^level), kept with
   * the entry that completes each, in its transaction; undefined for a subtree not (yet) complete.
   */
  logNodes(ids: readonly { level: number; index: number }[]): Promise<(Uint8Array | undefined)[]>;
  saveCheckpoint(size: number, note: string): Promise<void>;
  latestCheckpoint(): Promise<{ size: number; note: string } | undefined>;
  checkpoints(): Promise<{ size: number; note: string }[]>;

  /** Fails (without retrying) unless the database answers now; readiness checks call it. */
  ping(): Promise<void>;
}

export class NotFoundError extends Error {
  override name = 'NotFoundError';
}

export class ConflictError extends Error {
  override name = 'ConflictError';
}

/**
 * The database could not be reached, or did not answer, within the store's retry window.
 * `unavailable`: nothing was changed. `outcome-unknown`: the connection was lost after a change was
 * sent, so it may or may not have been applied (read it back before repeating it).
 */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError';
  constructor(
    readonly code: 'unavailable' | 'outcome-unknown',
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
