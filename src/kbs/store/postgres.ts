/**
 * The PostgreSQL backend, for several key-broker replicas sharing one database.
 *
 * Linearizable log: every logged mutation starts by locking the one-row `log_head`
 * (`SELECT … FOR UPDATE`), then makes its change, appends the entry at the head's index with the
 * head's leaf hash as `prev`, moves the head and commits. Two replicas appending at once therefore wait
 * for each other and produce one chain with contiguous indices. Taking the head lock FIRST also
 * serialises all admin changes across replicas (as BEGIN IMMEDIATE does in SQLite), so the
 * check-then-write steps below (ownership, existence, next version) cannot race; and since the head is
 * the first lock every such transaction takes, they cannot deadlock on each other.
 *
 * Sessions are plain autocommit statements on an UNLOGGED table (see schema/postgres.ts), visible to
 * every replica; `markAttested` is a compare-and-set on `status`.
 */

import pg from 'pg';
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
  referenceRecord,
  resourceMeta,
  resourceRecord,
  type SessionRow,
  sessionRecord,
} from './rows.js';
import { POSTGRES_SCHEMA, POSTGRES_SCHEMA_VERSION } from './schema/postgres.js';
import {
  ConflictError,
  type KbsStore,
  type LogAppend,
  NotFoundError,
  type PolicyRecord,
  type PolicyScope,
  type ReferenceValueRecord,
  type ResourceMeta,
  type ResourceRecord,
  type SealedSecret,
  type SessionRecord,
  type StoredLogEntry,
} from './types.js';

export interface PostgresStoreOptions extends StoreOptions {
  /**
   * Schema holding the tables (created by `migrate`); overrides `?schema=` in the URL. Lower-case
   * letters, digits and underscores. Without one, the server's default search_path applies.
   */
  schema?: string;
  /** Most connections this store opens at once (default 10). */
  poolSize?: number;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
/** Key of the advisory lock that keeps concurrent `migrate` calls from racing on CREATE … IF NOT EXISTS. */
const MIGRATE_LOCK = 0x636c6f69; // "cloi"

/** node-postgres sends Buffers as bytea; this is a view, not a copy. */
const bytea = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

const isUniqueViolation = (e: unknown): boolean => (e as { code?: string }).code === '23505';

/** Statements used on hot paths carry a name, so each connection prepares them once. */
const q = (name: string, text: string, values: unknown[] = []): pg.QueryConfig => ({ name, text, values });

/** Stored subtree hashes by (level, idx), in the order asked; undefined where none is stored. */
async function readNodes(
  c: pg.Pool | pg.PoolClient,
  ids: readonly { level: number; idx: number }[],
): Promise<(Uint8Array | undefined)[]> {
  if (ids.length === 0) return [];
  const r = await c.query<{ level: number; idx: string; hash: Uint8Array }>(
    q(
      'log_nodes',
      `SELECT n.level, n.idx, n.hash FROM unnest($1::smallint[], $2::bigint[]) AS w(level, idx)
       JOIN log_nodes n ON n.level = w.level AND n.idx = w.idx`,
      [ids.map((i) => i.level), ids.map((i) => i.idx)],
    ),
  );
  const found = new Map(r.rows.map((row) => [`${row.level}/${row.idx}`, bytes(row.hash)]));
  return ids.map((i) => found.get(`${i.level}/${i.idx}`));
}

/** The compact range of the first `size` entries from the stored subtrees; undefined if one is missing. */
async function rangeAt(
  c: pg.PoolClient,
  size: number,
  last: Uint8Array | undefined,
): Promise<Uint8Array[] | undefined> {
  const ids = rangeNodeIds(size);
  const stored = await readNodes(
    c,
    ids.filter((i) => i.level > 0),
  );
  const hashes = ids.map((i) => (i.level === 0 ? last : stored.shift()));
  return hashes.every((h) => h !== undefined) ? (hashes as Uint8Array[]) : undefined;
}

/**
 * Rebuilds the stored subtrees of the first `size` entries when some are missing (a database written
 * before they were kept, or by an older program since). Call holding the log head lock.
 */
async function backfillNodes(c: pg.PoolClient, size: number): Promise<void> {
  const count = await c.query<{ n: string }>('SELECT count(*) AS n FROM log_nodes');
  if (Number(count.rows[0]?.n ?? 0) === expectedNodeCount(size)) return;
  await c.query('DELETE FROM log_nodes');
  let range: Uint8Array[] = [];
  for (let from = 0; from < size; from += BACKFILL_BATCH) {
    const to = Math.min(size, from + BACKFILL_BATCH);
    const r = await c.query<{ leaf_hash: Uint8Array }>(
      'SELECT leaf_hash FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx',
      [from, to],
    );
    const step = completeNodes(
      from,
      range,
      r.rows.map((row) => bytes(row.leaf_hash)),
    );
    await c.query(
      'INSERT INTO log_nodes (level, idx, hash) SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])',
      [step.nodes.map((n) => n.level), step.nodes.map((n) => n.idx), step.nodes.map((n) => bytea(n.hash))],
    );
    range = step.hashes;
  }
}

/** A transaction holding the log head lock; it moves its copy of the head as it appends. */
class LoggedTx {
  /** The compact range at `size`, read from the stored subtrees on the first append. */
  private range: Uint8Array[] | undefined;

  constructor(
    readonly c: pg.PoolClient,
    private size: number,
    private prev: Uint8Array | undefined,
    private readonly build: StoreOptions['buildLogEntry'],
  ) {}

  async append(fields: LogAppend): Promise<StoredLogEntry> {
    const [e] = await this.appendMany([fields]);
    if (e instanceof Error) throw e;
    return e!;
  }

  /**
   * Appends several entries in one statement. An entry whose builder throws is left out (its slot
   * goes to the next one, so the chain stays contiguous) and its error is returned in its place.
   */
  async appendMany(batch: LogAppend[]): Promise<(StoredLogEntry | Error)[]> {
    const { results, built, size, prev } = buildBatch(this.build, this.size, this.prev, batch);
    if (built.length > 0) {
      if (!this.range) {
        this.range = await rangeAt(this.c, this.size, this.prev);
        if (!this.range) {
          // An older program appended without subtree hashes since this database was migrated.
          await backfillNodes(this.c, this.size);
          this.range = (await rangeAt(this.c, this.size, this.prev))!;
        }
      }
      const { nodes, hashes } = completeNodes(
        this.size,
        this.range,
        built.map((e) => e.leafHash),
      );
      await this.c.query(
        q(
          'log_append',
          `WITH e AS (
             INSERT INTO log_entries (idx, canonical, leaf_hash)
             SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])),
           n AS (
             INSERT INTO log_nodes (level, idx, hash)
             SELECT * FROM unnest($6::smallint[], $7::bigint[], $8::bytea[]))
           UPDATE log_head SET size = $4, leaf_hash = $5 WHERE id = 1`,
          [
            built.map((e) => e.index),
            built.map((e) => bytea(e.canonical)),
            built.map((e) => bytea(e.leafHash)),
            size,
            bytea(prev!),
            nodes.map((n) => n.level),
            nodes.map((n) => n.idx),
            nodes.map((n) => bytea(n.hash)),
          ],
        ),
      );
      this.size = size;
      this.prev = prev;
      this.range = hashes;
    }
    return results;
  }

  async owner(repository: string): Promise<string | undefined> {
    const r = await this.c.query<{ tenant: string }>(
      q('repo_tenant', 'SELECT tenant FROM repositories WHERE name = $1', [repository]),
    );
    return r.rows[0]?.tenant;
  }
}

export class PostgresStore implements KbsStore {
  private readonly pool: pg.Pool;
  private readonly schema: string | undefined;
  private readonly appends = new AppendQueue((batch) => this.logged((t) => t.appendMany(batch)));

  constructor(
    url: string,
    private readonly opts: PostgresStoreOptions,
  ) {
    const u = new URL(url);
    const schema = opts.schema ?? u.searchParams.get('schema') ?? undefined;
    u.searchParams.delete('schema');
    if (schema !== undefined && !SCHEMA_NAME.test(schema)) {
      throw new TypeError(`schema name must match ${SCHEMA_NAME}, got ${JSON.stringify(schema)}`);
    }
    this.schema = schema;
    this.pool = new pg.Pool({
      connectionString: u.toString(),
      max: opts.poolSize ?? 10,
      // Set at connection start-up, so no statement ever runs against another schema.
      ...(schema !== undefined && { options: `-c search_path=${schema}` }),
    });
    // An idle connection that the server drops must not crash the process; the pool replaces it.
    this.pool.on('error', () => {});
  }

  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const r = await fn(c);
      await c.query('COMMIT');
      c.release();
      return r;
    } catch (e) {
      // A connection whose ROLLBACK fails is in an unknown state: destroy it rather than reuse it.
      await c.query('ROLLBACK').then(
        () => c.release(),
        (err: Error) => c.release(err),
      );
      throw e;
    }
  }

  /** Runs `fn` in a transaction holding the log head lock (see the file comment). */
  private logged<T>(fn: (t: LoggedTx) => Promise<T>): Promise<T> {
    return this.tx(async (c) => {
      const head = await c.query<{ size: string; leaf_hash: Uint8Array | null }>(
        q('log_head', 'SELECT size, leaf_hash FROM log_head WHERE id = 1 FOR UPDATE'),
      );
      const row = head.rows[0];
      if (!row) throw new Error('log_head row is missing; run migrate() first');
      return fn(
        new LoggedTx(
          c,
          Number(row.size),
          row.leaf_hash ? bytes(row.leaf_hash) : undefined,
          this.opts.buildLogEntry,
        ),
      );
    });
  }

  async migrate(): Promise<void> {
    await this.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATE_LOCK]);
      if (this.schema !== undefined) await c.query(`CREATE SCHEMA IF NOT EXISTS ${this.schema}`);
      await c.query(POSTGRES_SCHEMA);
      const v = await c.query<{ version: number }>('SELECT version FROM schema_meta WHERE id = 1');
      const current = v.rows[0]?.version;
      if (current !== undefined && current > POSTGRES_SCHEMA_VERSION) {
        throw new Error(
          `database schema version ${current} is newer than this program's (${POSTGRES_SCHEMA_VERSION}); upgrade cloister`,
        );
      }
      await c.query(
        'INSERT INTO schema_meta (id, version) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET version = $1',
        [POSTGRES_SCHEMA_VERSION],
      );
      // Under the log head lock, so that no replica appends while the subtrees are rebuilt.
      const head = await c.query<{ size: string }>('SELECT size FROM log_head WHERE id = 1 FOR UPDATE');
      await backfillNodes(c, Number(head.rows[0]?.size ?? 0));
    });
  }

  async close(): Promise<void> {
    if (!this.pool.ended) await this.pool.end();
  }

  async createRepository(repository: string, tenant: string, log: LogAppend): Promise<void> {
    await this.logged(async (t) => {
      const owner = await t.owner(repository);
      if (owner !== undefined) {
        throw owner === tenant
          ? new ConflictError(`repository ${repository} already exists`)
          : ownerConflict(repository, owner, tenant);
      }
      await t.c.query('INSERT INTO repositories (name, tenant, created_at) VALUES ($1, $2, $3)', [
        repository,
        tenant,
        now(),
      ]);
      await t.append(log);
    });
  }

  async repositoryTenant(repository: string): Promise<string | undefined> {
    const r = await this.pool.query<{ tenant: string }>(
      q('repo_tenant', 'SELECT tenant FROM repositories WHERE name = $1', [repository]),
    );
    return r.rows[0]?.tenant;
  }

  async putResource(
    rec: Omit<ResourceRecord, 'version' | 'createdAt' | 'updatedAt'>,
    log: LogAppend,
  ): Promise<ResourceMeta> {
    checkResourcePath(rec);
    checkSize(rec.size);
    return this.logged(async (t) => {
      const owner = await t.owner(rec.repository);
      if (owner === undefined) {
        throw new NotFoundError(`repository ${rec.repository} does not exist; create it first`);
      }
      if (owner !== rec.tenant) throw ownerConflict(rec.repository, owner, rec.tenant);
      const stamp = now();
      const r = await t.c.query<ResourceRow>(
        `INSERT INTO resources (path, repository, type, tag, tenant, version, size, content_type,
           master_key_id, ciphertext, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $10)
         ON CONFLICT (path) DO NOTHING RETURNING *`,
        [
          rec.path,
          rec.repository,
          rec.type,
          rec.tag,
          rec.tenant,
          rec.size,
          rec.contentType,
          rec.secret.masterKeyId,
          bytea(rec.secret.ciphertext),
          stamp,
        ],
      );
      const row = r.rows[0];
      if (!row)
        throw new ConflictError(`resource ${rec.path} already exists; rotate it to store a new value`);
      await t.append(log);
      return resourceMeta(row);
    });
  }

  async rotateResource(
    path: string,
    secret: SealedSecret,
    size: number,
    log: LogAppend,
  ): Promise<ResourceMeta> {
    checkSize(size);
    return this.logged(async (t) => {
      const r = await t.c.query<ResourceRow>(
        `UPDATE resources SET version = version + 1, size = $1, master_key_id = $2, ciphertext = $3,
           updated_at = $4 WHERE path = $5 RETURNING *`,
        [size, secret.masterKeyId, bytea(secret.ciphertext), now(), path],
      );
      const row = r.rows[0];
      if (!row) throw new NotFoundError(`resource ${path} does not exist`);
      await t.append(log);
      return resourceMeta(row);
    });
  }

  async deleteResource(path: string, log: LogAppend): Promise<boolean> {
    return this.logged(async (t) => {
      const r = await t.c.query('DELETE FROM resources WHERE path = $1', [path]);
      if (r.rowCount !== 1) return false;
      await t.append(log);
      return true;
    });
  }

  async getResource(path: string): Promise<ResourceRecord | undefined> {
    const r = await this.pool.query<ResourceRow>(
      q('res_get', 'SELECT * FROM resources WHERE path = $1', [path]),
    );
    const row = r.rows[0];
    return row && resourceRecord(row);
  }

  async listResources(tenant?: string): Promise<ResourceMeta[]> {
    const r = await this.pool.query<ResourceRow>(
      'SELECT * FROM resources WHERE $1::text IS NULL OR tenant = $1 ORDER BY path COLLATE "C"',
      [tenant ?? null],
    );
    return r.rows.map(resourceMeta);
  }

  /**
   * The new secrets are computed without holding any lock (the callback may be slow, and the head lock
   * would stall every replica's releases meanwhile), then written in ONE transaction that checks no
   * resource changed in between: a concurrent change fails the whole rotation with a ConflictError
   * instead of writing back a stale value.
   */
  async reencryptSecrets(
    fn: (rec: ResourceRecord) => Promise<SealedSecret>,
    log: LogAppend,
  ): Promise<number> {
    const before = (await this.pool.query<ResourceRow>('SELECT * FROM resources ORDER BY path')).rows.map(
      resourceRecord,
    );
    const fresh: SealedSecret[] = [];
    for (const r of before) fresh.push(await fn(r));
    return this.logged(async (t) => {
      const count = await t.c.query<{ n: string }>('SELECT count(*) AS n FROM resources');
      if (Number(count.rows[0]!.n) !== before.length) {
        throw new ConflictError('resources changed during re-encryption; run it again');
      }
      const u = await t.c.query(
        `UPDATE resources r SET master_key_id = u.new_kid, ciphertext = u.new_ct
         FROM unnest($1::text[], $2::int[], $3::text[], $4::bytea[], $5::text[], $6::bytea[])
           AS u(path, version, old_kid, old_ct, new_kid, new_ct)
         WHERE r.path = u.path AND r.version = u.version AND r.master_key_id = u.old_kid
           AND r.ciphertext = u.old_ct`,
        [
          before.map((r) => r.path),
          before.map((r) => r.version),
          before.map((r) => r.secret.masterKeyId),
          before.map((r) => bytea(r.secret.ciphertext)),
          fresh.map((s) => s.masterKeyId),
          fresh.map((s) => bytea(s.ciphertext)),
        ],
      );
      if (u.rowCount !== before.length) {
        throw new ConflictError('resources changed during re-encryption; run it again');
      }
      await t.append(log);
      return before.length;
    });
  }

  async setPolicy(rec: Omit<PolicyRecord, 'version' | 'createdAt'>, log: LogAppend): Promise<PolicyRecord> {
    const repository = scopeRepository(rec.scope);
    const { kind, target } = scopeColumns(rec.scope);
    return this.logged(async (t) => {
      if (repository !== undefined) {
        const owner = await t.owner(repository);
        if (owner === undefined)
          throw new NotFoundError(`repository ${repository} does not exist; create it first`);
        if (owner !== rec.tenant) throw ownerConflict(repository, owner, rec.tenant);
      }
      const r = await t.c.query<PolicyRow>(
        `INSERT INTO policies (scope_kind, scope_target, version, tenant, source, created_at, actor)
         SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6
           FROM policies WHERE scope_kind = $1 AND scope_target = $2
         RETURNING *`,
        [kind, target, rec.tenant, rec.source, now(), rec.actor],
      );
      await t.append(log);
      return policyRecord(r.rows[0]!);
    });
  }

  async getPolicy(scope: PolicyScope): Promise<PolicyRecord | undefined> {
    const { kind, target } = scopeColumns(scope);
    const r = await this.pool.query<PolicyRow>(
      q(
        'pol_latest',
        `SELECT * FROM policies WHERE scope_kind = $1 AND scope_target = $2 ORDER BY version DESC LIMIT 1`,
        [kind, target],
      ),
    );
    const row = r.rows[0];
    return row && policyRecord(row);
  }

  async listPolicies(tenant?: string): Promise<PolicyRecord[]> {
    const r = await this.pool.query<PolicyRow>(
      `SELECT * FROM policies WHERE $1::text IS NULL OR tenant = $1
       ORDER BY scope_kind COLLATE "C", scope_target COLLATE "C", version`,
      [tenant ?? null],
    );
    return r.rows.map(policyRecord);
  }

  async addReferenceValue(
    rec: Omit<ReferenceValueRecord, 'id' | 'version' | 'createdAt'>,
    log: LogAppend,
  ): Promise<ReferenceValueRecord> {
    const expiresAt = rec.expiresAt === undefined ? null : isoTime(rec.expiresAt, 'expiresAt');
    return this.logged(async (t) => {
      const r = await t.c.query<ReferenceRow>(
        `INSERT INTO reference_values (id, tenant, tee, name, version, vals, created_at, expires_at, note)
         SELECT $1, $2, $3, $4, coalesce(max(version), 0) + 1, $5, $6, $7, $8
           FROM reference_values WHERE tenant = $2 AND tee = $3 AND name = $4
         RETURNING *`,
        [
          crypto.randomUUID(),
          rec.tenant,
          rec.tee,
          rec.name,
          JSON.stringify(rec.values),
          now(),
          expiresAt,
          rec.note ?? null,
        ],
      );
      await t.append(log);
      return referenceRecord(r.rows[0]!);
    });
  }

  async listReferenceValues(filter?: { tenant?: string; tee?: string }): Promise<ReferenceValueRecord[]> {
    const r = await this.pool.query<ReferenceRow>(
      `SELECT * FROM reference_values
       WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR tee = $2)
       ORDER BY tenant COLLATE "C", tee COLLATE "C", name COLLATE "C", version`,
      [filter?.tenant ?? null, filter?.tee ?? null],
    );
    return r.rows.map(referenceRecord);
  }

  async createSession(s: SessionRecord): Promise<void> {
    const expiresAt = isoTime(s.expiresAt, 'expiresAt');
    try {
      await this.pool.query(
        q(
          'ses_insert',
          `INSERT INTO sessions (id, tee, nonce, status, expires_at, token, tee_pubkey)
           VALUES ($1, $2, $3, $4, $5, $6, $7)`,
          [s.id, s.tee, s.nonce, s.status, expiresAt, s.token ?? null, s.teePubkey ?? null],
        ),
      );
    } catch (e) {
      if (isUniqueViolation(e)) throw new ConflictError(`session ${s.id} already exists`);
      throw e;
    }
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    const r = await this.pool.query<SessionRow>(q('ses_get', 'SELECT * FROM sessions WHERE id = $1', [id]));
    const row = r.rows[0];
    return row && sessionRecord(row);
  }

  async markAttested(id: string, token: string, teePubkey: string): Promise<boolean> {
    const r = await this.pool.query(
      q(
        'ses_attest',
        `UPDATE sessions SET status = 'attested', token = $1, tee_pubkey = $2
         WHERE id = $3 AND status = 'challenged'`,
        [token, teePubkey, id],
      ),
    );
    return r.rowCount === 1;
  }

  async deleteExpiredSessions(at: string): Promise<number> {
    const r = await this.pool.query('DELETE FROM sessions WHERE expires_at < $1', [isoTime(at, 'now')]);
    return r.rowCount ?? 0;
  }

  appendLog(log: LogAppend): Promise<StoredLogEntry> {
    return this.appends.push(log);
  }

  async logSize(): Promise<number> {
    const r = await this.pool.query<{ size: string }>(
      q('log_size', 'SELECT size FROM log_head WHERE id = 1'),
    );
    return Number(r.rows[0]?.size ?? 0);
  }

  async logEntries(from: number, to: number): Promise<StoredLogEntry[]> {
    checkRange(from, to);
    const r = await this.pool.query<EntryRow>(
      q('log_range', 'SELECT * FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx', [from, to]),
    );
    return r.rows.map(entry);
  }

  async logNodes(ids: readonly { level: number; index: number }[]): Promise<(Uint8Array | undefined)[]> {
    return readNodes(
      this.pool,
      ids.map((i) => ({ level: i.level, idx: i.index })),
    );
  }

  async saveCheckpoint(size: number, note: string): Promise<void> {
    // No lock needed: the log never shrinks, so a size within it stays within it.
    checkCheckpointSize(size, await this.logSize());
    await this.pool.query('INSERT INTO checkpoints (size, note, created_at) VALUES ($1, $2, $3)', [
      size,
      note,
      now(),
    ]);
  }

  async latestCheckpoint(): Promise<{ size: number; note: string } | undefined> {
    const r = await this.pool.query<{ size: string; note: string }>(
      'SELECT size, note FROM checkpoints ORDER BY size DESC, id DESC LIMIT 1',
    );
    const row = r.rows[0];
    return row && { size: Number(row.size), note: row.note };
  }

  async checkpoints(): Promise<{ size: number; note: string }[]> {
    const r = await this.pool.query<{ size: string; note: string }>(
      'SELECT size, note FROM checkpoints ORDER BY size, id',
    );
    return r.rows.map((row) => ({ size: Number(row.size), note: row.note }));
  }
}
