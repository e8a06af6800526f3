/**
 * Rules every backend applies the same way, so that memory, SQLite and PostgreSQL agree on what is
 * valid and what a record looks like.
 */
import { createHash } from 'node:crypto';
import {
  ConflictError,
  type LogAppend,
  type LogEntryBuilder,
  type Owner,
  type PolicyScope,
  type ResourceRecord,
  type StoredLogEntry,
} from './types.js';

export interface StoreOptions {
  /** Builds each transparency-log entry inside the store's transaction (see `LogEntryBuilder`). */
  buildLogEntry: LogEntryBuilder;
}

/** Times are stored as ISO 8601 UTC strings with milliseconds, so text order is time order. */
export function isoTime(value: string, what: string): string {
  const t = new Date(value);
  if (Number.isNaN(t.getTime())) throw new TypeError(`${what} is not a valid time: ${JSON.stringify(value)}`);
  return t.toISOString();
}

export function now(): string {
  return new Date().toISOString();
}

/** A resource's path is `<repository>/<type>/<tag>`; the separate fields must agree with it. */
export function checkResourcePath(rec: Pick<ResourceRecord, 'path' | 'repository' | 'type' | 'tag'>): void {
  const parts = rec.path.split('/');
  if (parts.length !== 3 || parts.some((p) => p === '')) {
    throw new TypeError(`resource path must be <repository>/<type>/<tag>, got ${JSON.stringify(rec.path)}`);
  }
  if (parts[0] !== rec.repository || parts[1] !== rec.type || parts[2] !== rec.tag) {
    throw new TypeError(
      `resource path ${rec.path} does not match repository/type/tag ${rec.repository}/${rec.type}/${rec.tag}`,
    );
  }
}

export function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new TypeError(`size must be a non-negative integer`);
}

/** Scopes are stored as (kind, target); the default scope has an empty target. */
export function scopeColumns(scope: PolicyScope): { kind: PolicyScope['kind']; target: string } {
  switch (scope.kind) {
    case 'resource':
      return { kind: 'resource', target: scope.path };
    case 'repository':
      return { kind: 'repository', target: scope.repository };
    case 'default':
      return { kind: 'default', target: '' };
  }
}

export function scopeFromColumns(kind: string, target: string): PolicyScope {
  if (kind === 'resource') return { kind: 'resource', path: target };
  if (kind === 'repository') return { kind: 'repository', repository: target };
  if (kind === 'default') return { kind: 'default' };
  throw new Error(`corrupt policy row: unknown scope kind ${JSON.stringify(kind)}`);
}

/**
 * The repository a policy scope belongs to. A policy for a repository (or a resource in it) may only be
 * set by the tenant owning that repository: otherwise a tenant could pre-empt another's repository
 * name with its own policy.
 */
export function scopeRepository(scope: PolicyScope): string | undefined {
  if (scope.kind === 'repository') return scope.repository;
  if (scope.kind === 'resource') {
    const repository = scope.path.split('/')[0];
    if (!repository) throw new TypeError(`resource scope has no repository: ${JSON.stringify(scope.path)}`);
    return repository;
  }
  return undefined;
}

/** How an owner reads in messages. */
export const ownerName = (o: Owner): string => (o === null ? 'the operator' : `tenant ${o}`);

export function ownerConflict(repository: string, owner: Owner, tenant: Owner): ConflictError {
  return new ConflictError(
    `repository ${repository} belongs to ${ownerName(owner)}, not ${ownerName(tenant)}; choose another repository name`,
  );
}

/** Calls the builder and checks what it returns before anything is written. */
export function buildEntry(
  build: LogEntryBuilder,
  index: number,
  prev: Uint8Array | undefined,
  fields: Parameters<LogEntryBuilder>[2],
): StoredLogEntry {
  const { canonical, leafHash } = build(index, prev, fields);
  if (!(canonical instanceof Uint8Array) || !(leafHash instanceof Uint8Array) || leafHash.length === 0) {
    throw new TypeError('log entry builder must return canonical and leafHash as non-empty Uint8Arrays');
  }
  return { index, canonical: new Uint8Array(canonical), leafHash: new Uint8Array(leafHash) };
}

/** `logEntries(from, to)` reads the half-open range [from, to). */
export function checkRange(from: number, to: number): void {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || to < from) {
    throw new RangeError(`log range must satisfy 0 <= from <= to, got [${from}, ${to})`);
  }
}

export function checkCheckpointSize(size: number, logSize: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > logSize) {
    throw new RangeError(`checkpoint size ${size} is outside the log (size ${logSize})`);
  }
}

export function sessionStatus(value: string): 'challenged' | 'attested' {
  if (value === 'challenged' || value === 'attested') return value;
  throw new Error(`corrupt session row: unknown status ${JSON.stringify(value)}`);
}

/** Most log appends committed together in one transaction. */
const MAX_BATCH = 256;

/**
 * Group commit for `appendLog`: appends requested while a batch is being committed wait and go
 * together in the next transaction, so the log-head lock and the commit's fsync are paid once per
 * batch instead of once per entry. Each caller still resolves only after its own entry committed, and
 * an entry whose builder throws fails alone (the others keep contiguous indices).
 */
export class AppendQueue {
  private readonly pending: {
    fields: LogAppend;
    resolve: (e: StoredLogEntry) => void;
    reject: (e: unknown) => void;
  }[] = [];
  private flushing = false;

  /** `commit` appends the batch in one transaction; an Error in a slot is that entry's builder failure. */
  constructor(private readonly commit: (batch: LogAppend[]) => Promise<(StoredLogEntry | Error)[]>) {}

  push(fields: LogAppend): Promise<StoredLogEntry> {
    return new Promise((resolve, reject) => {
      this.pending.push({ fields, resolve, reject });
      if (!this.flushing) {
        this.flushing = true;
        // One event-loop turn lets requests that are already due join the first batch.
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        const batch = this.pending.splice(0, MAX_BATCH);
        try {
          const results = await this.commit(batch.map((b) => b.fields));
          results.forEach((r, i) => {
            if (r instanceof Error) batch[i]!.reject(r);
            else batch[i]!.resolve(r);
          });
        } catch (e) {
          for (const b of batch) b.reject(e);
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}

/**
 * Builds the entries of a batch from the head (`size`, `prev`): an entry whose builder throws is left
 * out and its error takes its slot. Returns the built entries to write and the new head.
 */
export function buildBatch(
  build: LogEntryBuilder,
  size: number,
  prev: Uint8Array | undefined,
  batch: LogAppend[],
): {
  results: (StoredLogEntry | Error)[];
  built: StoredLogEntry[];
  size: number;
  prev: Uint8Array | undefined;
} {
  const built: StoredLogEntry[] = [];
  const results = batch.map((fields) => {
    try {
      const e = buildEntry(build, size, prev, fields);
      built.push(e);
      size += 1;
      prev = e.leafHash;
      return e;
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err));
    }
  });
  return { results, built, size, prev };
}

// ---------------------------------------------------------------------------------------------------
// Stored subtree hashes of the transparency log. Every perfect subtree of level ≥ 1 (the 2^level
// entries from idx·2^level) is stored with the entry that completes it, in the same transaction, so a
// proof reads O(log n) hashes instead of rehashing the log (docs/transparency-log.md). Computed here
// synchronously with node:crypto because SQLite transactions cannot await.

/** A stored subtree: level ≥ 1, the 2^level entries from idx·2^level. */
export interface LogNode {
  level: number;
  idx: number;
  hash: Uint8Array;
}

const NODE_PREFIX = Uint8Array.of(1);

/** RFC 6962 interior node hash: SHA-256(0x01 ‖ left ‖ right). */
function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest());
}

/**
 * The perfect subtrees whose hashes make up a log of `size` entries (its compact range), largest first.
 * A level-0 one is the last entry's leaf hash.
 */
export function rangeNodeIds(size: number): { level: number; idx: number }[] {
  const out: { level: number; idx: number }[] = [];
  let start = 0;
  for (let level = 52; level >= 0; level--) {
    const w = 2 ** level;
    if (start + w <= size) {
      out.push({ level, idx: start / w });
      start += w;
    }
  }
  return out;
}

/** How many subtrees of level ≥ 1 a log of `size` entries has: size minus the set bits of size. */
export function expectedNodeCount(size: number): number {
  let bits = 0;
  for (let s = size; s > 0; s = Math.floor(s / 2)) bits += s % 2;
  return size - bits;
}

/**
 * Appends leaf hashes to a compact range (`hashes`: those of rangeNodeIds(size)); returns the subtrees
 * they complete (to store) and the new range.
 */
export function completeNodes(
  size: number,
  hashes: readonly Uint8Array[],
  leaves: readonly Uint8Array[],
): { nodes: LogNode[]; hashes: Uint8Array[] } {
  const range = hashes.slice();
  const nodes: LogNode[] = [];
  let n = size;
  for (const leaf of leaves) {
    let node = leaf;
    let level = 0;
    for (let s = n; s % 2 === 1; s = Math.floor(s / 2)) {
      node = nodeHash(range.pop()!, node);
      level++;
      nodes.push({ level, idx: (n + 1) / 2 ** level - 1, hash: node });
    }
    range.push(node);
    n++;
  }
  return { nodes, hashes: range };
}

/** Entries read per step when stored subtrees are rebuilt for a log that lacks them. */
export const BACKFILL_BATCH = 8192;
