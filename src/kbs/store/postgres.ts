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
 *
 * Losing the database (a terminated connection, a restart, a failover) never ends the process: every
 * operation is retried for `retryForMs` where a retry cannot apply a change twice, then fails with a
 * StoreUnavailableError (the server answers 503). Safe to retry: anything that failed before its
 * COMMIT (or single write) was sent, serialization failures and deadlocks, reads, and idempotent
 * writes. A COMMIT whose answer is lost is settled first (see `landed`): a logged transaction that
 * did commit is not run again, so neither its change nor its log entry is applied twice.
 */

import type pg from 'pg';
import { equalBytes } from '../../util/index.js';
import { requireOptional } from '../../util/optional/node.js';
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
import { POSTGRES_MIGRATE_1_TO_2, POSTGRES_SCHEMA, POSTGRES_SCHEMA_VERSION } from './schema/postgres.js';
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
  StoreUnavailableError,
  type TrainCheckpoint,
  type TrainReceiptFacts,
  type TrainReceiptRecord,
  withFrom,
} from './types.js';

export interface PostgresStoreOptions extends StoreOptions {
  /**
   * Schema holding the tables (created by `migrate`); overrides `?schema=` in the URL. Lower-case
   * letters, digits and underscores. Without one, the server's default search_path applies.
   */
  schema?: string;
  /** Most connections this store opens at once (default 10). */
  poolSize?: number;
  /**
   * How long one operation keeps retrying while the database is unreachable, restarting or failing
   * over, before it fails with a StoreUnavailableError (default 5000 ms).
   */
  retryForMs?: number;
}

// pg is an optional peer dependency (an SQLite-only broker need not install it), loaded when the first
// PostgresStore is made: the store index imports this module for every store URL.
let pgModule: typeof pg | undefined;
const pgLib = (): typeof pg =>
  (pgModule ??= requireOptional<typeof pg>('pg', 'the PostgreSQL store (postgres:// URLs)'));

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
/** Key of the advisory lock that keeps concurrent `migrate` calls from racing on CREATE … IF NOT EXISTS. */
const MIGRATE_LOCK = 0x636c6f69; // "cloi"

/** node-postgres sends Buffers as bytea; this is a view, not a copy. */
const bytea = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

const isUniqueViolation = (e: unknown): boolean => (e as { code?: string }).code === '23505';

/**
 * SQLSTATEs of a session the server ended or would not start: connection_exception (08…),
 * admin_shutdown (57P01, pg_terminate_backend and fast shutdown), crash_shutdown, cannot_connect_now
 * (starting up or shutting down), too_many_connections.
 */
const LOST_SQLSTATE = /^(08|57P0[123]$|53300$)/;
/**
 * SQLSTATEs after which the transaction is known to have rolled back: serialization_failure,
 * deadlock_detected, and read_only_sql_transaction (a connection to a primary that was demoted in a
 * failover; the retry takes a fresh connection).
 */
const RETRY_SQLSTATE = new Set(['40001', '40P01', '25006']);
/** Socket errors of a connection that broke or could not be made. */
const LOST_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);
/** node-postgres reports a dropped connection (or a connect timeout) with these messages and no code. */
const LOST_MESSAGE =
  /^(Connection terminated|Client has encountered a connection error|timeout exceeded when trying to connect)/;

/** `lost`: the connection broke or could not be made; `retry`: rolled back, run again; `other`: give up. */
function failure(e: unknown): 'lost' | 'retry' | 'other' {
  if (e instanceof StoreUnavailableError) return 'other';
  if (e instanceof pgLib().DatabaseError) {
    if (e.code === undefined) return 'other';
    if (LOST_SQLSTATE.test(e.code)) return 'lost';
    return RETRY_SQLSTATE.has(e.code) ? 'retry' : 'other';
  }
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && LOST_ERRNO.has(code)) return 'lost';
  return e instanceof Error && LOST_MESSAGE.test(e.message) ? 'lost' : 'other';
}

/**
 * A client whose connection dies emits 'error'; unheard, that event ends the process. The pool
 * listens only while a client is idle, so every client gets this listener for its whole life (see the
 * constructor). The query in flight fails as well, and that failure is what the store acts on.
 */
const swallow = (): void => {};

/** What settles a logged transaction whose COMMIT got no answer: its id and the last entry it appended. */
interface CommitProbe {
  xid: string;
  entry: StoredLogEntry;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const outcomeUnknown = (cause: unknown) =>
  new StoreUnavailableError(
    'outcome-unknown',
    `the database connection was lost while a change was being committed; whether it was applied is unknown: ${(cause as Error).message}`,
    { cause },
  );

/** Statements used on hot paths carry a name, so each connection prepares them once. */
const q = (name: string, text: string, values: unknown[] = []): pg.QueryConfig => ({ name, text, values });

/**
 * Stored subtree hashes by (level, idx), in the order asked; undefined where none is stored. `query` is
 * a transaction's client, or the store's retried read outside one.
 */
async function readNodes(
  query: <R extends pg.QueryResultRow>(config: pg.QueryConfig) => Promise<pg.QueryResult<R>>,
  ids: readonly { level: number; idx: number }[],
): Promise<(Uint8Array | undefined)[]> {
  if (ids.length === 0) return [];
  const r = await query<{ level: number; idx: string; hash: Uint8Array }>(
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
    (config) => c.query(config),
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

/** The log's end as one replica last committed it: size, last leaf hash, compact range. */
interface LogTip {
  size: number;
  leaf: Uint8Array;
  range: Uint8Array[];
}

/** A transaction holding the log head lock; it moves its copy of the head as it appends. */
class LoggedTx {
  /** The last entry appended; undefined while the transaction has written nothing. */
  last: StoredLogEntry | undefined;
  /** The compact range at `size`, read from the stored subtrees on the first append. */
  private range: Uint8Array[] | undefined;

  constructor(
    readonly c: pg.PoolClient,
    private size: number,
    private prev: Uint8Array | undefined,
    private readonly build: StoreOptions['buildLogEntry'],
    known?: LogTip,
  ) {
    // The compact range this replica left after its last commit still describes the head when the
    // head is that same entry (its leaf hash covers the whole chain before it): no read under the lock.
    if (known && known.size === size && prev !== undefined && equalBytes(known.leaf, prev))
      this.range = known.range;
  }

  /** Where the log ends after this transaction, for the next one on this replica. */
  get tip(): LogTip | undefined {
    return this.range && this.prev ? { size: this.size, leaf: this.prev, range: this.range } : undefined;
  }

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
      this.last = built.at(-1);
      this.range = hashes;
    }
    return results;
  }

  async owner(repository: string): Promise<{ tenant: Owner } | undefined> {
    const r = await this.c.query<{ tenant: Owner }>(
      q('repo_tenant', 'SELECT tenant FROM repositories WHERE name = $1', [repository]),
    );
    const row = r.rows[0];
    return row && { tenant: row.tenant };
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
    this.retryForMs = opts.retryForMs ?? 5000;
    this.pool = new (pgLib().Pool)({
      connectionString: u.toString(),
      max: opts.poolSize ?? 10,
      // Set at connection start-up, so no statement ever runs against another schema.
      ...(schema !== undefined && { options: `-c search_path=${schema}` }),
      // Names the broker's sessions in pg_stat_activity unless the URL names them.
      fallback_application_name: 'cloister-kbs',
      // A server that does not answer (a failover to an address not yet up) fails the attempt instead
      // of hanging it; the retry loop then decides.
      connectionTimeoutMillis: 5000,
      keepAlive: true,
    });
    // An idle connection that the server drops must not crash the process; the pool replaces it.
    this.pool.on('error', swallow);
    // Attached as the pool makes a client, before it is handed out: a listener added after
    // `connect()` resolves would come a microtask late for an error that arrives in the same read
    // as the connection's ReadyForQuery (a session terminated right as it starts).
    this.pool.on('connect', (c) => c.on('error', swallow));
  }

  private readonly retryForMs: number;

  /**
   * Runs `op` until it succeeds, fails for a reason a retry cannot fix, or `retryForMs` has passed
   * (then a StoreUnavailableError). `op` is only called again after a failure that `failure` classes
   * as lost or retry, so each caller makes sure such a failure leaves nothing applied.
   */
  private async retrying<T>(op: (deadline: number) => Promise<T>): Promise<T> {
    const deadline = performance.now() + this.retryForMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await op(deadline);
      } catch (e) {
        if (failure(e) === 'other') throw e;
        // Exponential backoff with jitter, so replicas reconnecting together do not arrive in step.
        const wait = Math.min(1000, 25 * 2 ** attempt) * (0.5 + Math.random() / 2);
        if (performance.now() + wait > deadline) {
          throw new StoreUnavailableError(
            'unavailable',
            `the database is unavailable: ${(e as Error).message}`,
            { cause: e },
          );
        }
        await sleep(wait);
      }
    }
  }

  /**
   * Runs one autocommit statement on a checked-out client and gives the client back. A client whose
   * connection broke, or that a retry must not get again (`25006`: it reaches a read-only server after
   * a failover), is closed instead.
   */
  private async statement<R extends pg.QueryResultRow>(
    c: pg.PoolClient,
    query: string | pg.QueryConfig,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>> {
    try {
      const r = await c.query<R>(query, values);
      c.release();
      return r;
    } catch (e) {
      c.release(failure(e) === 'other' ? undefined : (e as Error));
      throw e;
    }
  }

  /** One autocommit statement, not retried. */
  private async once<R extends pg.QueryResultRow>(
    query: string | pg.QueryConfig,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>> {
    return this.statement<R>(await this.pool.connect(), query, values);
  }

  /** A read, or a write that is safe to repeat: retried after any connection loss. */
  private read<R extends pg.QueryResultRow>(
    query: string | pg.QueryConfig,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>> {
    return this.retrying(() => this.once<R>(query, values));
  }

  /**
   * A single-statement write that must not be repeated (a compare-and-set, an insert): retried only if
   * it never reached the server; a connection lost after it was sent leaves its outcome unknown.
   */
  private write<R extends pg.QueryResultRow>(
    query: string | pg.QueryConfig,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>> {
    return this.retrying(async () => {
      // A failure to connect is retried: nothing was sent.
      const c = await this.pool.connect();
      return this.statement<R>(c, query, values).catch((e: unknown) => {
        throw failure(e) === 'lost' ? outcomeUnknown(e) : e;
      });
    });
  }

  /**
   * Runs `fn` in a transaction, retried as `retrying` says. `fn` returns its value and, for a logged
   * transaction that wrote, the probe that settles a lost COMMIT answer; without a probe, running the
   * transaction again is safe (it wrote nothing, or what it writes is idempotent).
   */
  private tx<T>(fn: (c: pg.PoolClient) => Promise<{ value: T; probe?: CommitProbe }>): Promise<T> {
    return this.retrying(async (deadline) => {
      const c = await this.pool.connect();
      let done: { value: T; probe?: CommitProbe } | undefined;
      try {
        await c.query('BEGIN');
        done = await fn(c);
        await c.query('COMMIT');
      } catch (e) {
        // The server answered the COMMIT with an error other than ending the session: it rolled back.
        const refused = e instanceof pgLib().DatabaseError && failure(e) !== 'lost';
        if (done === undefined || refused) {
          // A connection whose ROLLBACK fails is in an unknown state, and one that a retry must not
          // get again (see `statement`) is closed as well.
          const drop = failure(e) === 'other' ? undefined : (e as Error);
          await c.query('ROLLBACK').then(
            () => c.release(drop),
            (err: Error) => c.release(err),
          );
          throw e;
        }
        // The COMMIT was sent and its answer lost: it may have committed.
        c.release(e as Error);
        if (done.probe === undefined) throw e;
        if (await this.landed(done.probe, deadline)) return done.value;
        throw e;
      }
      c.release();
      return done.value;
    });
  }

  /**
   * Whether a transaction whose COMMIT got no answer committed. `txid_status` says whether that
   * transaction id committed, and the entry it appended must be in the log at its index: after a
   * failover to a replica that never received the transaction, the id may have been reused by another.
   * While the old session is still finishing ('in progress'), asks again; with no answer by the
   * deadline, the outcome is unknown (503, and nothing is retried).
   */
  private async landed(p: CommitProbe, deadline: number): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      let last: unknown;
      try {
        const s = await this.once<{ status: string | null }>('SELECT txid_status($1::bigint) AS status', [
          p.xid,
        ]);
        const status = s.rows[0]?.status;
        if (status === 'aborted') return false;
        if (status === 'committed') {
          // A statement after the status answer sees the commit (a new snapshot).
          const r = await this.once<{ leaf_hash: Uint8Array }>(
            'SELECT leaf_hash FROM log_entries WHERE idx = $1',
            [p.entry.index],
          );
          const leaf = r.rows[0]?.leaf_hash;
          return leaf !== undefined && equalBytes(bytes(leaf), p.entry.leafHash);
        }
        if (status !== 'in progress') throw outcomeUnknown(new Error(`transaction status ${status}`));
      } catch (e) {
        if (failure(e) === 'other') throw e instanceof StoreUnavailableError ? e : outcomeUnknown(e);
        last = e;
      }
      const wait = Math.min(1000, 25 * 2 ** attempt);
      if (performance.now() + wait > deadline) throw outcomeUnknown(last ?? new Error('still in progress'));
      await sleep(wait);
    }
  }

  /** Runs `fn` in a transaction holding the log head lock (see the file comment). */
  /** The log's end after this replica's last logged transaction (see LoggedTx). */
  private tip: LogTip | undefined;

  private logged<T>(fn: (t: LoggedTx) => Promise<T>): Promise<T> {
    return this.tx(async (c) => {
      // The transaction id costs nothing here: locking the row assigns one anyway.
      const head = await c.query<{ size: string; leaf_hash: Uint8Array | null; xid: string }>(
        q(
          'log_head',
          'SELECT size, leaf_hash, txid_current()::text AS xid FROM log_head WHERE id = 1 FOR UPDATE',
        ),
      );
      const row = head.rows[0];
      if (!row) throw new Error('log_head row is missing; run migrate() first');
      const t = new LoggedTx(
        c,
        Number(row.size),
        row.leaf_hash ? bytes(row.leaf_hash) : undefined,
        this.opts.buildLogEntry,
        this.tip,
      );
      const value = await fn(t);
      // Kept even if the COMMIT then fails: the next transaction uses it only if the locked head is
      // this very entry, and a hash-chained entry fixes everything before it.
      this.tip = t.tip ?? this.tip;
      // Every logged change appends in its transaction; one that appended nothing changed nothing.
      return { value, ...(t.last && { probe: { xid: row.xid, entry: t.last } }) };
    });
  }

  async migrate(): Promise<void> {
    // Idempotent (IF NOT EXISTS, ON CONFLICT): no probe, a lost COMMIT is simply run again.
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
      if (current === 1) await c.query(POSTGRES_MIGRATE_1_TO_2);
      await c.query(
        'INSERT INTO schema_meta (id, version) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET version = $1',
        [POSTGRES_SCHEMA_VERSION],
      );
      // Under the log head lock, so that no replica appends while the subtrees are rebuilt.
      const head = await c.query<{ size: string }>('SELECT size FROM log_head WHERE id = 1 FOR UPDATE');
      await backfillNodes(c, Number(head.rows[0]?.size ?? 0));
      return { value: undefined };
    });
  }

  async close(): Promise<void> {
    if (!this.pool.ended) await this.pool.end();
  }

  async ping(): Promise<void> {
    await this.once('SELECT 1');
  }

  async createRepository(repository: string, tenant: Owner, log: LogAppend): Promise<void> {
    await this.logged(async (t) => {
      const owner = await t.owner(repository);
      if (owner !== undefined) {
        throw owner.tenant === tenant
          ? new ConflictError(`repository ${repository} already exists`)
          : ownerConflict(repository, owner.tenant, tenant);
      }
      await t.c.query('INSERT INTO repositories (name, tenant, created_at) VALUES ($1, $2, $3)', [
        repository,
        tenant,
        now(),
      ]);
      await t.append(log);
    });
  }

  async repositoryOwner(repository: string): Promise<{ tenant: Owner } | undefined> {
    const r = await this.read<{ tenant: Owner }>(
      q('repo_tenant', 'SELECT tenant FROM repositories WHERE name = $1', [repository]),
    );
    const row = r.rows[0];
    return row && { tenant: row.tenant };
  }

  async assignRepository(repository: string, tenant: Owner, log: LogAppend): Promise<{ from: Owner }> {
    return this.logged(async (t) => {
      const owner = await t.owner(repository);
      if (owner === undefined) throw new NotFoundError(`repository ${repository} does not exist`);
      if (owner.tenant === tenant)
        throw new ConflictError(`repository ${repository} already belongs to ${ownerName(tenant)}`);
      await t.c.query('UPDATE repositories SET tenant = $1 WHERE name = $2', [tenant, repository]);
      await t.c.query('UPDATE resources SET tenant = $1 WHERE repository = $2', [tenant, repository]);
      // The repository's own scope, and the scopes of the resources in it (`<repository>/…`).
      await t.c.query(
        `UPDATE policies SET tenant = $1 WHERE (scope_kind = 'repository' AND scope_target = $2)
           OR (scope_kind = 'resource' AND left(scope_target, length($2) + 1) = $2 || '/')`,
        [tenant, repository],
      );
      await t.append(withFrom(log, owner.tenant));
      return { from: owner.tenant };
    });
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
      if (owner.tenant !== rec.tenant) throw ownerConflict(rec.repository, owner.tenant, rec.tenant);
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
    const r = await this.read<ResourceRow>(q('res_get', 'SELECT * FROM resources WHERE path = $1', [path]));
    const row = r.rows[0];
    return row && resourceRecord(row);
  }

  async listResources(tenant?: string): Promise<ResourceMeta[]> {
    const r = await this.read<ResourceRow>(
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
    const before = (await this.read<ResourceRow>('SELECT * FROM resources ORDER BY path')).rows.map(
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
        if (owner.tenant !== rec.tenant) throw ownerConflict(repository, owner.tenant, rec.tenant);
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
    const r = await this.read<PolicyRow>(
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
    const r = await this.read<PolicyRow>(
      `SELECT * FROM policies WHERE $1::text IS NULL OR tenant = $1
       ORDER BY scope_kind COLLATE "C", scope_target COLLATE "C", version`,
      [tenant ?? null],
    );
    return r.rows.map(policyRecord);
  }

  async deletePolicy(scope: PolicyScope, log: LogAppend): Promise<number> {
    const { kind, target } = scopeColumns(scope);
    return this.logged(async (t) => {
      const r = await t.c.query('DELETE FROM policies WHERE scope_kind = $1 AND scope_target = $2', [
        kind,
        target,
      ]);
      const n = r.rowCount ?? 0;
      if (n > 0) await t.append(log);
      return n;
    });
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
           FROM reference_values WHERE tenant IS NOT DISTINCT FROM $2 AND tee = $3 AND name = $4
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

  async listReferenceValues(filter?: { tenant?: Owner; tee?: string }): Promise<ReferenceValueRecord[]> {
    // IS NOT DISTINCT FROM: a NULL tenant (the operator) equals only NULL.
    const r = await this.read<ReferenceRow>(
      `SELECT * FROM reference_values
       WHERE ($1::boolean OR tenant IS NOT DISTINCT FROM $2::text) AND ($3::text IS NULL OR tee = $3)
       ORDER BY tenant COLLATE "C" NULLS FIRST, tee COLLATE "C", name COLLATE "C", version`,
      [filter?.tenant === undefined, filter?.tenant ?? null, filter?.tee ?? null],
    );
    return r.rows.map(referenceRecord);
  }

  async deleteReferenceValues(set: ReferenceValueSet, log: LogAppend): Promise<number> {
    return this.logged(async (t) => {
      const r = await t.c.query(
        'DELETE FROM reference_values WHERE tenant IS NOT DISTINCT FROM $1::text AND tee = $2 AND name = $3',
        [set.tenant, set.tee, set.name],
      );
      const n = r.rowCount ?? 0;
      if (n > 0) await t.append(log);
      return n;
    });
  }

  async revokeAdminToken(
    rec: Omit<AdminTokenRevocation, 'revokedAt'>,
    log: LogAppend,
  ): Promise<AdminTokenRevocation> {
    const expiresAt = rec.expiresAt === undefined ? null : isoTime(rec.expiresAt, 'expiresAt');
    return this.logged(async (t) => {
      const r = await t.c.query<RevocationRow>(
        `INSERT INTO admin_token_revocations (token_id, expires_at, revoked_at, actor, reason)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_id) DO NOTHING RETURNING *`,
        [rec.tokenId, expiresAt, now(), rec.actor, rec.reason ?? null],
      );
      const row = r.rows[0];
      if (!row) throw new ConflictError(`admin token ${rec.tokenId} is already revoked`);
      await t.append(log);
      return revocationRecord(row);
    });
  }

  async isAdminTokenRevoked(tokenId: string): Promise<boolean> {
    const r = await this.read(
      q('rev_get', 'SELECT 1 FROM admin_token_revocations WHERE token_id = $1', [tokenId]),
    );
    return r.rows.length > 0;
  }

  async listAdminTokenRevocations(): Promise<AdminTokenRevocation[]> {
    const r = await this.read<RevocationRow>(
      'SELECT * FROM admin_token_revocations ORDER BY revoked_at, token_id COLLATE "C"',
    );
    return r.rows.map(revocationRecord);
  }

  async createSession(s: SessionRecord): Promise<void> {
    const expiresAt = isoTime(s.expiresAt, 'expiresAt');
    try {
      await this.write(
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
    const r = await this.read<SessionRow>(q('ses_get', 'SELECT * FROM sessions WHERE id = $1', [id]));
    const row = r.rows[0];
    return row && sessionRecord(row);
  }

  async markAttested(id: string, token: string, teePubkey: string): Promise<boolean> {
    const r = await this.write(
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
    // Idempotent, so retried like a read.
    const r = await this.read('DELETE FROM sessions WHERE expires_at < $1', [isoTime(at, 'now')]);
    return r.rowCount ?? 0;
  }

  async trainCheckpoint(job: string): Promise<TrainCheckpoint | undefined> {
    const r = await this.read<TrainCheckpointRow>(
      q('tc_get', 'SELECT number, sha256 FROM train_checkpoints WHERE job = $1', [job]),
    );
    const row = r.rows[0];
    return row && trainCheckpoint(row);
  }

  async advanceTrainCheckpoint(
    job: string,
    prev: TrainCheckpoint | null,
    next: TrainCheckpoint,
    log: LogAppend,
  ): Promise<CheckpointAdvance> {
    return this.logged(async (t): Promise<CheckpointAdvance> => {
      // One statement decides: the first insert, or an update guarded by the checkpoint held. The
      // log head lock taken first serialises this with every other replica's advance as well.
      const r =
        prev === null
          ? await t.c.query(
              q(
                'tc_first',
                `INSERT INTO train_checkpoints (job, number, sha256, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job) DO NOTHING`,
                [job, next.number, next.sha256, now()],
              ),
            )
          : await t.c.query(
              q(
                'tc_advance',
                `UPDATE train_checkpoints SET number = $1, sha256 = $2, updated_at = $3
                 WHERE job = $4 AND number = $5 AND sha256 = $6`,
                [next.number, next.sha256, now(), job, prev.number, prev.sha256],
              ),
            );
      if (r.rowCount !== 1) {
        const held = await t.c.query<TrainCheckpointRow>(
          'SELECT number, sha256 FROM train_checkpoints WHERE job = $1',
          [job],
        );
        const row = held.rows[0];
        return { advanced: false, held: row && trainCheckpoint(row) };
      }
      await t.append(log);
      return { advanced: true };
    });
  }

  async addTrainReceipt(
    facts: TrainReceiptFacts,
    envelope: Uint8Array,
    log: LogAppend,
  ): Promise<{ record: TrainReceiptRecord; created: boolean }> {
    return this.logged(async (t) => {
      // One receipt per job: the log head lock taken first serialises this check and the insert
      // with every other replica's.
      const known = await t.c.query<TrainReceiptRow>(
        `SELECT sha256, job, log_index, recorded_at, facts FROM train_receipts WHERE job = $1
         ORDER BY log_index LIMIT 1`,
        [facts.job],
      );
      if (known.rows[0]) return { record: trainReceiptRecord(known.rows[0]), created: false };
      const e = await t.append(log);
      const row: TrainReceiptRow = {
        sha256: facts.sha256,
        job: facts.job,
        log_index: e.index,
        recorded_at: now(),
        facts: receiptFactsJson(facts),
      };
      await t.c.query(
        `WITH r AS (
           INSERT INTO train_receipts (sha256, job, log_index, recorded_at, facts, envelope)
           VALUES ($1, $2, $3, $4, $5, $6))
         INSERT INTO train_receipt_recipients (recipient, receipt) SELECT unnest($7::text[]), $1`,
        [
          row.sha256,
          row.job,
          row.log_index,
          row.recorded_at,
          row.facts,
          bytea(envelope),
          receiptRecipients(facts),
        ],
      );
      return { record: trainReceiptRecord(row), created: true };
    });
  }

  async trainReceiptsFor(recipient: string, limit: number): Promise<TrainReceiptRecord[]> {
    const r = await this.read<TrainReceiptRow>(
      q(
        'tr_for',
        `SELECT r.sha256, r.job, r.log_index, r.recorded_at, r.facts FROM train_receipt_recipients x
         JOIN train_receipts r ON r.sha256 = x.receipt WHERE x.recipient = $1
         ORDER BY r.log_index DESC LIMIT $2`,
        [recipient, limit],
      ),
    );
    return r.rows.map(trainReceiptRecord);
  }

  async trainReceiptOfJob(job: string): Promise<TrainReceiptRecord | undefined> {
    const r = await this.read<TrainReceiptRow>(
      q(
        'tr_of_job',
        `SELECT sha256, job, log_index, recorded_at, facts FROM train_receipts WHERE job = $1
         ORDER BY log_index LIMIT 1`,
        [job],
      ),
    );
    const row = r.rows[0];
    return row && trainReceiptRecord(row);
  }

  async trainReceipt(
    sha256: string,
  ): Promise<{ record: TrainReceiptRecord; envelope: Uint8Array } | undefined> {
    const r = await this.read<TrainReceiptRow & { envelope: Uint8Array }>(
      'SELECT sha256, job, log_index, recorded_at, facts, envelope FROM train_receipts WHERE sha256 = $1',
      [sha256],
    );
    const row = r.rows[0];
    return row && { record: trainReceiptRecord(row), envelope: bytes(row.envelope) };
  }

  appendLog(log: LogAppend): Promise<StoredLogEntry> {
    return this.appends.push(log);
  }

  async logSize(): Promise<number> {
    const r = await this.read<{ size: string }>(q('log_size', 'SELECT size FROM log_head WHERE id = 1'));
    return Number(r.rows[0]?.size ?? 0);
  }

  async logEntries(from: number, to: number): Promise<StoredLogEntry[]> {
    checkRange(from, to);
    const r = await this.read<EntryRow>(
      q('log_range', 'SELECT * FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx', [from, to]),
    );
    return r.rows.map(entry);
  }

  async logNodes(ids: readonly { level: number; index: number }[]): Promise<(Uint8Array | undefined)[]> {
    return readNodes(
      (config) => this.read(config),
      ids.map((i) => ({ level: i.level, idx: i.index })),
    );
  }

  async saveCheckpoint(size: number, note: string): Promise<void> {
    // No lock needed: the log never shrinks, so a size within it stays within it.
    checkCheckpointSize(size, await this.logSize());
    await this.write('INSERT INTO checkpoints (size, note, created_at) VALUES ($1, $2, $3)', [
      size,
      note,
      now(),
    ]);
  }

  async latestCheckpoint(): Promise<{ size: number; note: string } | undefined> {
    const r = await this.read<{ size: string; note: string }>(
      'SELECT size, note FROM checkpoints ORDER BY size DESC, id DESC LIMIT 1',
    );
    const row = r.rows[0];
    return row && { size: Number(row.size), note: row.note };
  }

  async checkpoints(): Promise<{ size: number; note: string }[]> {
    const r = await this.read<{ size: string; note: string }>(
      'SELECT size, note FROM checkpoints ORDER BY size, id',
    );
    return r.rows.map((row) => ({ size: Number(row.size), note: row.note }));
  }
}
