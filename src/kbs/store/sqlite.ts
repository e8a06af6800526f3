/**
 * The embedded backend: one SQLite file in WAL mode through better-sqlite3.
 *
 * Durability: every commit that changes what the transparency log records runs with
 * `synchronous=FULL`, so an acknowledged admin change or release survives a crash of the process or of
 * the machine. Session writes are the exception: they run with `synchronous=NORMAL` (in WAL mode that
 * survives a killed process, not a power cut), because a session lives for minutes and a lost one only
 * makes the client start a new handshake — and three fsyncs per key release would cap the broker's
 * throughput at the disk's fsync rate. A later FULL commit flushes the WAL, session frames included.
 *
 * Every mutation is one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock up front, so the
 * log head read inside it cannot be overtaken by another connection or process before the append.
 * Log appends are group-committed (see `AppendQueue`): concurrent releases share one fsync.
 */

import { equalBytes } from '../../util/index.js';
import {
  AppendQueue,
  BACKFILL_BATCH,
  buildBatch,
  checkCheckpointSize,
  checkRange,
  checkResourcePath,
  checkSize,
  completeNodes,
  expectedNodeCount,
  isoTime,
  now,
  ownerConflict,
  ownerName,
  rangeNodeIds,
  type StoreOptions,
  scopeColumns,
  scopeRepository,
} from './common.js';
import {
  bytes,
  type EntryRow,
  entry,
  type PolicyRow,
  policyRecord,
  type ReferenceRow,
  type ResourceRow,
  type RevocationRow,
  receiptFactsJson,
  receiptRecipients,
  referenceRecord,
  resourceMeta,
  resourceRecord,
  revocationRecord,
  type SessionRow,
  sessionRecord,
  type TrainCheckpointRow,
  type TrainReceiptRow,
  trainCheckpoint,
  trainReceiptRecord,
} from './rows.js';
import { SQLITE_MIGRATE_1_TO_2, SQLITE_SCHEMA, SQLITE_SCHEMA_VERSION } from './schema/sqlite.js';
import Database from './sqlite-driver.js';
import {
  type AdminTokenRevocation,
  type CheckpointAdvance,
  ConflictError,
  type KbsStore,
  type LogAppend,
  NotFoundError,
  type Owner,
  type PolicyRecord,
  type PolicyScope,
  type ReferenceValueRecord,
  type ReferenceValueSet,
  type ResourceMeta,
  type ResourceRecord,
  type SealedSecret,
  type SessionRecord,
  type StoredLogEntry,
  type TrainCheckpoint,
  type TrainReceiptFacts,
  type TrainReceiptRecord,
  withFrom,
} from './types.js';

export interface SqliteStoreOptions extends StoreOptions {
  /**
   * fsync policy for logged commits. FULL (default): an acknowledged write survives a power cut.
   * NORMAL: survives a killed process but may lose the last commits on power loss; faster.
   */
  synchronous?: 'FULL' | 'NORMAL';
  /** How long a writer waits for another connection's lock before failing (default 5000 ms). */
  busyTimeoutMs?: number;
}

/** better-sqlite3 binds Buffers as BLOBs; this is a view, not a copy. */
const blob = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

const SQL = {
  repoTenant: 'SELECT tenant FROM repositories WHERE name = ?',
  repoInsert: 'INSERT INTO repositories (name, tenant, created_at) VALUES (?, ?, ?)',
  repoAssign: 'UPDATE repositories SET tenant = ? WHERE name = ?',
  resAssign: 'UPDATE resources SET tenant = ? WHERE repository = ?',
  // A repository's own scope, and the scopes of the resources in it (`<repository>/…`).
  polAssign: `UPDATE policies SET tenant = @tenant WHERE (scope_kind = 'repository' AND scope_target = @repo)
    OR (scope_kind = 'resource' AND substr(scope_target, 1, length(@repo) + 1) = @repo || '/')`,
  resGet: 'SELECT * FROM resources WHERE path = ?',
  resAll: 'SELECT * FROM resources ORDER BY path',
  resByTenant: 'SELECT * FROM resources WHERE tenant = ? ORDER BY path',
  resInsert: `INSERT INTO resources (path, repository, type, tag, tenant, version, size, content_type,
    master_key_id, ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)`,
  resRotate: `UPDATE resources SET version = version + 1, size = ?, master_key_id = ?, ciphertext = ?,
    updated_at = ? WHERE path = ? RETURNING *`,
  resDelete: 'DELETE FROM resources WHERE path = ?',
  resCount: 'SELECT count(*) AS n FROM resources',
  resReencrypt: `UPDATE resources SET master_key_id = ?, ciphertext = ?
    WHERE path = ? AND version = ? AND master_key_id = ? AND ciphertext = ?`,
  polLatest: `SELECT * FROM policies WHERE scope_kind = ? AND scope_target = ?
    ORDER BY version DESC LIMIT 1`,
  polInsert: `INSERT INTO policies (scope_kind, scope_target, version, tenant, source, created_at, actor)
    VALUES (?, ?, ?, ?, ?, ?, ?)`,
  polDelete: 'DELETE FROM policies WHERE scope_kind = ? AND scope_target = ?',
  polAll: 'SELECT * FROM policies ORDER BY scope_kind, scope_target, version',
  polByTenant: 'SELECT * FROM policies WHERE tenant = ? ORDER BY scope_kind, scope_target, version',
  // IS, not =: a NULL tenant (the operator) equals only NULL.
  refLatest: 'SELECT max(version) AS v FROM reference_values WHERE tenant IS ? AND tee = ? AND name = ?',
  refInsert: `INSERT INTO reference_values (id, tenant, tee, name, version, vals, created_at, expires_at, note)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  refDelete: 'DELETE FROM reference_values WHERE tenant IS ? AND tee = ? AND name = ?',
  refList: `SELECT * FROM reference_values WHERE (@every = 1 OR tenant IS @tenant) AND (@tee IS NULL OR tee = @tee)
    ORDER BY tenant, tee, name, version`,
  revInsert: `INSERT INTO admin_token_revocations (token_id, expires_at, revoked_at, actor, reason)
    VALUES (?, ?, ?, ?, ?)`,
  revGet: 'SELECT token_id FROM admin_token_revocations WHERE token_id = ?',
  revAll: 'SELECT * FROM admin_token_revocations ORDER BY revoked_at, token_id',
  sesInsert: `INSERT INTO sessions (id, tee, nonce, status, expires_at, token, tee_pubkey)
    VALUES (?, ?, ?, ?, ?, ?, ?)`,
  sesGet: 'SELECT * FROM sessions WHERE id = ?',
  sesAttest: `UPDATE sessions SET status = 'attested', token = ?, tee_pubkey = ?
    WHERE id = ? AND status = 'challenged'`,
  sesExpire: 'DELETE FROM sessions WHERE expires_at < ?',
  logHead: 'SELECT idx, leaf_hash FROM log_entries ORDER BY idx DESC LIMIT 1',
  logInsert: 'INSERT INTO log_entries (idx, canonical, leaf_hash) VALUES (?, ?, ?)',
  logSize: 'SELECT coalesce(max(idx) + 1, 0) AS n FROM log_entries',
  logRange: 'SELECT * FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx',
  logLeaves: 'SELECT leaf_hash FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx',
  nodeGet: 'SELECT hash FROM log_nodes WHERE level = ? AND idx = ?',
  nodeInsert: 'INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)',
  nodeCount: 'SELECT count(*) AS n FROM log_nodes',
  cpInsert: 'INSERT INTO checkpoints (size, note, created_at) VALUES (?, ?, ?)',
  cpAll: 'SELECT size, note FROM checkpoints ORDER BY size, id',
  cpLatest: 'SELECT size, note FROM checkpoints ORDER BY size DESC, id DESC LIMIT 1',
  tcGet: 'SELECT number, sha256 FROM train_checkpoints WHERE job = ?',
  tcFirst: `INSERT INTO train_checkpoints (job, number, sha256, updated_at) VALUES (?, ?, ?, ?)
    ON CONFLICT (job) DO NOTHING`,
  tcAdvance: `UPDATE train_checkpoints SET number = ?, sha256 = ?, updated_at = ?
    WHERE job = ? AND number = ? AND sha256 = ?`,
  trGet: 'SELECT sha256, job, log_index, recorded_at, facts FROM train_receipts WHERE sha256 = ?',
  trOfJob: `SELECT sha256, job, log_index, recorded_at, facts FROM train_receipts WHERE job = ?
    ORDER BY log_index LIMIT 1`,
  trEnvelope: 'SELECT envelope FROM train_receipts WHERE sha256 = ?',
  trInsert: `INSERT INTO train_receipts (sha256, job, log_index, recorded_at, facts, envelope)
    VALUES (?, ?, ?, ?, ?, ?)`,
  trRecipient: 'INSERT INTO train_receipt_recipients (recipient, receipt) VALUES (?, ?)',
  trFor: `SELECT r.sha256, r.job, r.log_index, r.recorded_at, r.facts FROM train_receipt_recipients x
    JOIN train_receipts r ON r.sha256 = x.receipt WHERE x.recipient = ? ORDER BY r.log_index DESC LIMIT ?`,
} as const;
type StatementName = keyof typeof SQL;

export class SqliteStore implements KbsStore {
  private readonly db: Database.Database;
  private readonly cache = new Map<StatementName, Database.Statement>();
  /** One wrapper for all transactions: better-sqlite3 prepares its BEGIN/COMMIT once per wrapper. */
  private readonly transaction: Database.Transaction<(fn: () => unknown) => unknown>;
  private readonly synchronous: 'FULL' | 'NORMAL';
  private readonly appends = new AppendQueue(async (batch) => this.write(() => this.appendMany(batch)));
  /** Statements switching fsync off for a session write and back on; absent when already NORMAL. */
  private readonly relax?: { off: Database.Statement; on: Database.Statement };

  /** `file` is a path or ':memory:'. */
  constructor(
    file: string,
    private readonly opts: SqliteStoreOptions,
  ) {
    this.synchronous = opts.synchronous ?? 'FULL';
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${this.synchronous}`);
    this.db.pragma(`busy_timeout = ${opts.busyTimeoutMs ?? 5000}`);
    this.db.pragma('foreign_keys = ON');
    this.transaction = this.db.transaction((fn: () => unknown) => fn());
    if (this.synchronous === 'FULL') {
      this.relax = {
        off: this.db.prepare('PRAGMA synchronous = NORMAL'),
        on: this.db.prepare('PRAGMA synchronous = FULL'),
      };
    }
  }

  /** Prepared once per connection and reused. */
  private st(name: StatementName): Database.Statement {
    let s = this.cache.get(name);
    if (!s) {
      s = this.db.prepare(SQL[name]);
      this.cache.set(name, s);
    }
    return s;
  }

  /** Runs `fn` in one BEGIN IMMEDIATE transaction; any throw rolls everything back. */
  private write<T>(fn: () => T): T {
    return this.transaction.immediate(fn) as T;
  }

  /** A session write, committed without fsync (see the file comment). */
  private ephemeral<T>(fn: () => T): T {
    if (!this.relax) return fn();
    this.relax.off.run();
    try {
      return fn();
    } finally {
      this.relax.on.run();
    }
  }

  /** Appends the next log entry; call only inside `write`, which holds the write lock. */
  private append(fields: LogAppend): StoredLogEntry {
    const [e] = this.appendMany([fields]);
    if (e instanceof Error) throw e;
    return e!;
  }

  /** The log's end after this store's last append: size, last leaf hash, compact range. */
  private tip: { size: number; leaf: Uint8Array; range: Uint8Array[] } | undefined;

  /** Appends a batch (see `AppendQueue`); call only inside `write`. */
  private appendMany(batch: LogAppend[]): (StoredLogEntry | Error)[] {
    const head = this.st('logHead').get() as EntryRow | undefined;
    const { results, built } = buildBatch(
      this.opts.buildLogEntry,
      head ? Number(head.idx) + 1 : 0,
      head && bytes(head.leaf_hash),
      batch,
    );
    for (const e of built) this.st('logInsert').run(e.index, blob(e.canonical), blob(e.leafHash));
    if (built.length > 0) {
      const size = built[0]!.index;
      const last = head && bytes(head.leaf_hash);
      // The range this store left after its last append still holds when the head is that very entry
      // (a hash-chained entry fixes everything before it): no node reads per append.
      const tip = this.tip;
      let range =
        tip && last && tip.size === size && equalBytes(tip.leaf, last) ? tip.range : this.rangeAt(size, last);
      if (!range) {
        // An older program appended without subtree hashes since this database was migrated.
        this.backfillNodes(size);
        range = this.rangeAt(size, head && bytes(head.leaf_hash))!;
      }
      const { nodes, hashes } = completeNodes(
        size,
        range,
        built.map((e) => e.leafHash),
      );
      for (const n of nodes) this.st('nodeInsert').run(n.level, n.idx, blob(n.hash));
      this.tip = { size: size + built.length, leaf: built.at(-1)!.leafHash, range: hashes };
    }
    return results;
  }

  /** The compact range of the first `size` entries from the stored subtrees; undefined if one is missing. */
  private rangeAt(size: number, last: Uint8Array | undefined): Uint8Array[] | undefined {
    const hashes: Uint8Array[] = [];
    for (const { level, idx } of rangeNodeIds(size)) {
      const row =
        level === 0
          ? { hash: last }
          : (this.st('nodeGet').get(level, idx) as { hash: Uint8Array } | undefined);
      if (!row?.hash) return undefined;
      hashes.push(bytes(row.hash));
    }
    return hashes;
  }

  /**
   * Rebuilds the stored subtrees of the first `size` entries when some are missing (a database written
   * before they were kept, or by an older program since). Call only inside `write`.
   */
  private backfillNodes(size: number): void {
    if ((this.st('nodeCount').get() as { n: number }).n === expectedNodeCount(size)) return;
    this.db.exec('DELETE FROM log_nodes');
    let range: Uint8Array[] = [];
    for (let from = 0; from < size; from += BACKFILL_BATCH) {
      const to = Math.min(size, from + BACKFILL_BATCH);
      const leaves = (this.st('logLeaves').all(from, to) as { leaf_hash: Uint8Array }[]).map((r) =>
        bytes(r.leaf_hash),
      );
      const step = completeNodes(from, range, leaves);
      for (const n of step.nodes) this.st('nodeInsert').run(n.level, n.idx, blob(n.hash));
      range = step.hashes;
    }
  }

  private owner(repository: string): { tenant: Owner } | undefined {
    const row = this.st('repoTenant').get(repository) as { tenant: Owner } | undefined;
    return row && { tenant: row.tenant };
  }

  async migrate(): Promise<void> {
    const version = () => this.db.pragma('user_version', { simple: true }) as number;
    // Rebuilding tables needs foreign keys off, which SQLite ignores inside a transaction.
    const rebuild = version() === 1;
    if (rebuild) this.db.pragma('foreign_keys = OFF');
    try {
      this.write(() => {
        const current = version();
        if (current > SQLITE_SCHEMA_VERSION) {
          throw new Error(
            `database schema version ${current} is newer than this program's (${SQLITE_SCHEMA_VERSION}); upgrade cloister`,
          );
        }
        if (current === 1) {
          this.db.exec(SQLITE_MIGRATE_1_TO_2);
          const broken = this.db.pragma('foreign_key_check') as unknown[];
          if (broken.length > 0) throw new Error('schema migration 1→2 broke foreign keys; nothing changed');
        } else {
          this.db.exec(SQLITE_SCHEMA);
        }
        this.db.pragma(`user_version = ${SQLITE_SCHEMA_VERSION}`);
        this.backfillNodes((this.st('logSize').get() as { n: number }).n);
      });
    } finally {
      if (rebuild) this.db.pragma('foreign_keys = ON');
    }
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  async createRepository(repository: string, tenant: Owner, log: LogAppend): Promise<void> {
    this.write(() => {
      const owner = this.owner(repository);
      if (owner !== undefined) {
        throw owner.tenant === tenant
          ? new ConflictError(`repository ${repository} already exists`)
          : ownerConflict(repository, owner.tenant, tenant);
      }
      this.st('repoInsert').run(repository, tenant, now());
      this.append(log);
    });
  }

  async repositoryOwner(repository: string): Promise<{ tenant: Owner } | undefined> {
    return this.owner(repository);
  }

  async assignRepository(repository: string, tenant: Owner, log: LogAppend): Promise<{ from: Owner }> {
    return this.write(() => {
      const owner = this.owner(repository);
      if (owner === undefined) throw new NotFoundError(`repository ${repository} does not exist`);
      if (owner.tenant === tenant)
        throw new ConflictError(`repository ${repository} already belongs to ${ownerName(tenant)}`);
      this.st('repoAssign').run(tenant, repository);
      this.st('resAssign').run(tenant, repository);
      this.st('polAssign').run({ tenant, repo: repository });
      this.append(withFrom(log, owner.tenant));
      return { from: owner.tenant };
    });
  }

  async putResource(
    rec: Omit<ResourceRecord, 'version' | 'createdAt' | 'updatedAt'>,
    log: LogAppend,
  ): Promise<ResourceMeta> {
    checkResourcePath(rec);
    checkSize(rec.size);
    return this.write(() => {
      const owner = this.owner(rec.repository);
      if (owner === undefined) {
        throw new NotFoundError(`repository ${rec.repository} does not exist; create it first`);
      }
      if (owner.tenant !== rec.tenant) throw ownerConflict(rec.repository, owner.tenant, rec.tenant);
      if (this.st('resGet').get(rec.path)) {
        throw new ConflictError(`resource ${rec.path} already exists; rotate it to store a new value`);
      }
      const t = now();
      this.st('resInsert').run(
        rec.path,
        rec.repository,
        rec.type,
        rec.tag,
        rec.tenant,
        rec.size,
        rec.contentType,
        rec.secret.masterKeyId,
        blob(rec.secret.ciphertext),
        t,
        t,
      );
      this.append(log);
      return resourceMeta(this.st('resGet').get(rec.path) as ResourceRow);
    });
  }

  async rotateResource(
    path: string,
    secret: SealedSecret,
    size: number,
    log: LogAppend,
  ): Promise<ResourceMeta> {
    checkSize(size);
    return this.write(() => {
      const row = this.st('resRotate').get(size, secret.masterKeyId, blob(secret.ciphertext), now(), path) as
        | ResourceRow
        | undefined;
      if (!row) throw new NotFoundError(`resource ${path} does not exist`);
      this.append(log);
      return resourceMeta(row);
    });
  }

  async deleteResource(path: string, log: LogAppend): Promise<boolean> {
    return this.write(() => {
      if (this.st('resDelete').run(path).changes === 0) return false;
      this.append(log);
      return true;
    });
  }

  async getResource(path: string): Promise<ResourceRecord | undefined> {
    const row = this.st('resGet').get(path) as ResourceRow | undefined;
    return row && resourceRecord(row);
  }

  async listResources(tenant?: string): Promise<ResourceMeta[]> {
    const rows = (
      tenant === undefined ? this.st('resAll').all() : this.st('resByTenant').all(tenant)
    ) as ResourceRow[];
    return rows.map(resourceMeta);
  }

  /**
   * The callback is async and a SQLite transaction cannot span an await, so the new secrets are computed
   * first and then written in ONE transaction that also checks no resource changed in between
   * (optimistic concurrency): a concurrent rotate makes the whole re-encryption fail with a
   * ConflictError instead of writing back a stale value.
   */
  async reencryptSecrets(
    fn: (rec: ResourceRecord) => Promise<SealedSecret>,
    log: LogAppend,
  ): Promise<number> {
    const before = (this.st('resAll').all() as ResourceRow[]).map(resourceRecord);
    const fresh: SealedSecret[] = [];
    for (const r of before) fresh.push(await fn(r));
    return this.write(() => {
      const { n } = this.st('resCount').get() as { n: number };
      if (n !== before.length)
        throw new ConflictError('resources changed during re-encryption; run it again');
      before.forEach((r, i) => {
        const s = fresh[i]!;
        const changed = this.st('resReencrypt').run(
          s.masterKeyId,
          blob(s.ciphertext),
          r.path,
          r.version,
          r.secret.masterKeyId,
          blob(r.secret.ciphertext),
        ).changes;
        if (changed !== 1) {
          throw new ConflictError(`resource ${r.path} changed during re-encryption; run it again`);
        }
      });
      this.append(log);
      return before.length;
    });
  }

  async setPolicy(rec: Omit<PolicyRecord, 'version' | 'createdAt'>, log: LogAppend): Promise<PolicyRecord> {
    const repository = scopeRepository(rec.scope);
    const { kind, target } = scopeColumns(rec.scope);
    return this.write(() => {
      if (repository !== undefined) {
        const owner = this.owner(repository);
        if (owner === undefined)
          throw new NotFoundError(`repository ${repository} does not exist; create it first`);
        if (owner.tenant !== rec.tenant) throw ownerConflict(repository, owner.tenant, rec.tenant);
      }
      const latest = this.st('polLatest').get(kind, target) as PolicyRow | undefined;
      const row: PolicyRow = {
        scope_kind: kind,
        scope_target: target,
        version: (latest?.version ?? 0) + 1,
        tenant: rec.tenant,
        source: rec.source,
        created_at: now(),
        actor: rec.actor,
      };
      this.st('polInsert').run(
        row.scope_kind,
        row.scope_target,
        row.version,
        row.tenant,
        row.source,
        row.created_at,
        row.actor,
      );
      this.append(log);
      return policyRecord(row);
    });
  }

  async getPolicy(scope: PolicyScope): Promise<PolicyRecord | undefined> {
    const { kind, target } = scopeColumns(scope);
    const row = this.st('polLatest').get(kind, target) as PolicyRow | undefined;
    return row && policyRecord(row);
  }

  async listPolicies(tenant?: string): Promise<PolicyRecord[]> {
    const rows = (
      tenant === undefined ? this.st('polAll').all() : this.st('polByTenant').all(tenant)
    ) as PolicyRow[];
    return rows.map(policyRecord);
  }

  async deletePolicy(scope: PolicyScope, log: LogAppend): Promise<number> {
    const { kind, target } = scopeColumns(scope);
    return this.write(() => {
      const n = this.st('polDelete').run(kind, target).changes;
      if (n > 0) this.append(log);
      return n;
    });
  }

  async addReferenceValue(
    rec: Omit<ReferenceValueRecord, 'id' | 'version' | 'createdAt'>,
    log: LogAppend,
  ): Promise<ReferenceValueRecord> {
    const expiresAt = rec.expiresAt === undefined ? null : isoTime(rec.expiresAt, 'expiresAt');
    return this.write(() => {
      const { v } = this.st('refLatest').get(rec.tenant, rec.tee, rec.name) as { v: number | null };
      const row: ReferenceRow = {
        id: crypto.randomUUID(),
        tenant: rec.tenant,
        tee: rec.tee,
        name: rec.name,
        version: (v ?? 0) + 1,
        vals: JSON.stringify(rec.values),
        created_at: now(),
        expires_at: expiresAt,
        note: rec.note ?? null,
      };
      this.st('refInsert').run(
        row.id,
        row.tenant,
        row.tee,
        row.name,
        row.version,
        row.vals,
        row.created_at,
        row.expires_at,
        row.note,
      );
      this.append(log);
      return referenceRecord(row);
    });
  }

  async listReferenceValues(filter?: { tenant?: Owner; tee?: string }): Promise<ReferenceValueRecord[]> {
    const rows = this.st('refList').all({
      every: filter?.tenant === undefined ? 1 : 0,
      tenant: filter?.tenant ?? null,
      tee: filter?.tee ?? null,
    }) as ReferenceRow[];
    return rows.map(referenceRecord);
  }

  async deleteReferenceValues(set: ReferenceValueSet, log: LogAppend): Promise<number> {
    return this.write(() => {
      const n = this.st('refDelete').run(set.tenant, set.tee, set.name).changes;
      if (n > 0) this.append(log);
      return n;
    });
  }

  async revokeAdminToken(
    rec: Omit<AdminTokenRevocation, 'revokedAt'>,
    log: LogAppend,
  ): Promise<AdminTokenRevocation> {
    const row: RevocationRow = {
      token_id: rec.tokenId,
      expires_at: rec.expiresAt === undefined ? null : isoTime(rec.expiresAt, 'expiresAt'),
      revoked_at: now(),
      actor: rec.actor,
      reason: rec.reason ?? null,
    };
    return this.write(() => {
      if (this.st('revGet').get(rec.tokenId))
        throw new ConflictError(`admin token ${rec.tokenId} is already revoked`);
      this.st('revInsert').run(row.token_id, row.expires_at, row.revoked_at, row.actor, row.reason);
      this.append(log);
      return revocationRecord(row);
    });
  }

  async isAdminTokenRevoked(tokenId: string): Promise<boolean> {
    return this.st('revGet').get(tokenId) !== undefined;
  }

  async listAdminTokenRevocations(): Promise<AdminTokenRevocation[]> {
    return (this.st('revAll').all() as RevocationRow[]).map(revocationRecord);
  }

  async createSession(s: SessionRecord): Promise<void> {
    const expiresAt = isoTime(s.expiresAt, 'expiresAt');
    try {
      this.ephemeral(() =>
        this.st('sesInsert').run(
          s.id,
          s.tee,
          s.nonce,
          s.status,
          expiresAt,
          s.token ?? null,
          s.teePubkey ?? null,
        ),
      );
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new ConflictError(`session ${s.id} already exists`);
      }
      throw e;
    }
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    const row = this.st('sesGet').get(id) as SessionRow | undefined;
    return row && sessionRecord(row);
  }

  async markAttested(id: string, token: string, teePubkey: string): Promise<boolean> {
    return this.ephemeral(() => this.st('sesAttest').run(token, teePubkey, id).changes === 1);
  }

  async deleteExpiredSessions(at: string): Promise<number> {
    const t = isoTime(at, 'now');
    return this.ephemeral(() => this.st('sesExpire').run(t).changes);
  }

  async trainCheckpoint(job: string): Promise<TrainCheckpoint | undefined> {
    const row = this.st('tcGet').get(job) as TrainCheckpointRow | undefined;
    return row && trainCheckpoint(row);
  }

  async advanceTrainCheckpoint(
    job: string,
    prev: TrainCheckpoint | null,
    next: TrainCheckpoint,
    log: LogAppend,
  ): Promise<CheckpointAdvance> {
    return this.write((): CheckpointAdvance => {
      // One statement decides: the first insert, or an update guarded by the checkpoint held.
      const changed =
        prev === null
          ? this.st('tcFirst').run(job, next.number, next.sha256, now()).changes
          : this.st('tcAdvance').run(next.number, next.sha256, now(), job, prev.number, prev.sha256).changes;
      if (changed !== 1) {
        const row = this.st('tcGet').get(job) as TrainCheckpointRow | undefined;
        return { advanced: false, held: row && trainCheckpoint(row) };
      }
      this.append(log);
      return { advanced: true };
    });
  }

  async addTrainReceipt(
    facts: TrainReceiptFacts,
    envelope: Uint8Array,
    log: LogAppend,
  ): Promise<{ record: TrainReceiptRecord; created: boolean }> {
    return this.write(() => {
      // One receipt per job; SQLite's one writer makes this check and the insert one step.
      const known = this.st('trOfJob').get(facts.job) as TrainReceiptRow | undefined;
      if (known) return { record: trainReceiptRecord(known), created: false };
      const e = this.append(log);
      const row: TrainReceiptRow = {
        sha256: facts.sha256,
        job: facts.job,
        log_index: e.index,
        recorded_at: now(),
        facts: receiptFactsJson(facts),
      };
      this.st('trInsert').run(row.sha256, row.job, row.log_index, row.recorded_at, row.facts, blob(envelope));
      for (const r of receiptRecipients(facts)) this.st('trRecipient').run(r, facts.sha256);
      return { record: trainReceiptRecord(row), created: true };
    });
  }

  async trainReceiptsFor(recipient: string, limit: number): Promise<TrainReceiptRecord[]> {
    return (this.st('trFor').all(recipient, limit) as TrainReceiptRow[]).map(trainReceiptRecord);
  }

  async trainReceiptOfJob(job: string): Promise<TrainReceiptRecord | undefined> {
    const row = this.st('trOfJob').get(job) as TrainReceiptRow | undefined;
    return row && trainReceiptRecord(row);
  }

  async trainReceipt(
    sha256: string,
  ): Promise<{ record: TrainReceiptRecord; envelope: Uint8Array } | undefined> {
    const row = this.st('trGet').get(sha256) as TrainReceiptRow | undefined;
    if (!row) return undefined;
    const { envelope } = this.st('trEnvelope').get(sha256) as { envelope: Uint8Array };
    return { record: trainReceiptRecord(row), envelope: bytes(envelope) };
  }

  appendLog(log: LogAppend): Promise<StoredLogEntry> {
    return this.appends.push(log);
  }

  async logSize(): Promise<number> {
    return (this.st('logSize').get() as { n: number }).n;
  }

  async logEntries(from: number, to: number): Promise<StoredLogEntry[]> {
    checkRange(from, to);
    return (this.st('logRange').all(from, to) as EntryRow[]).map(entry);
  }

  async logNodes(ids: readonly { level: number; index: number }[]): Promise<(Uint8Array | undefined)[]> {
    return ids.map(({ level, index }) => {
      const row = this.st('nodeGet').get(level, index) as { hash: Uint8Array } | undefined;
      return row && bytes(row.hash);
    });
  }

  async saveCheckpoint(size: number, note: string): Promise<void> {
    this.write(() => {
      checkCheckpointSize(size, (this.st('logSize').get() as { n: number }).n);
      this.st('cpInsert').run(size, note, now());
    });
  }

  async latestCheckpoint(): Promise<{ size: number; note: string } | undefined> {
    const row = this.st('cpLatest').get() as { size: number; note: string } | undefined;
    return row && { size: row.size, note: row.note };
  }

  async checkpoints(): Promise<{ size: number; note: string }[]> {
    return (this.st('cpAll').all() as { size: number; note: string }[]).map((r) => ({
      size: r.size,
      note: r.note,
    }));
  }
}
