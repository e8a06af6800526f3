/**
 * The broker's transparency log on top of its store: entries are appended by the store inside the
 * transaction of the change they record (with `buildLogEntry`, synchronous because SQLite transactions
 * cannot await) together with the subtree hashes they complete, and checkpoints are signed periodically
 * from the compact range those give.
 */
import { createHash } from 'node:crypto';
import {
  checkpointText,
  EMPTY_RANGE,
  type LogEntry,
  type LogHead,
  type LogStore,
  type NodeId,
  type NoteSigner,
  parseEntry,
  rangeRoot,
  signNote,
  TranslogError,
  ZERO_HASH_HEX,
} from '../translog/index.js';
import { canonicalizeBytes } from '../util/index.js';
import { rangeNodeIds } from './store/common.js';
import type { KbsStore, LogAppend, LogEntryBuilder } from './store/types.js';

/** Builds the entry exactly as the translog library defines it (src/translog/entry.ts), synchronously. */
export const buildLogEntry: LogEntryBuilder = (index, prev, fields: LogAppend) => {
  const entry: LogEntry = {
    index,
    time: new Date().toISOString(),
    kind: fields.kind,
    // The log format writes "no tenant" as ''; the operator is no tenant.
    tenant: fields.tenant ?? '',
    actor: fields.actor,
    subject: fields.subject,
    details: JSON.parse(JSON.stringify(fields.details)),
    prevHash: prev ? Buffer.from(prev).toString('hex') : ZERO_HASH_HEX,
  };
  const canonical = canonicalizeBytes(entry);
  const leafHash = createHash('sha256').update(Uint8Array.of(0)).update(canonical).digest();
  return { canonical, leafHash: new Uint8Array(leafHash) };
};

const decode = (b: Uint8Array) => new TextDecoder().decode(b);

/**
 * The translog library's reader interface over the broker's store. Proofs read the subtree hashes the
 * store keeps with each append (O(log n) per proof), and the head is read from them too.
 */
export class KbsLogStore implements LogStore {
  constructor(private readonly store: KbsStore) {}

  size(): Promise<number> {
    return this.store.logSize();
  }

  /** The compact range at the current size: its perfect subtrees, read from the stored ones. */
  async head(): Promise<LogHead> {
    const size = await this.store.logSize();
    if (size === 0) return { range: EMPTY_RANGE, lastLeafHash: null };
    const ids = rangeNodeIds(size);
    const [nodes, [last]] = await Promise.all([
      this.store.logNodes(ids.filter((i) => i.level > 0).map((i) => ({ level: i.level, index: i.idx }))),
      this.getLeafHashes(size - 1, size),
    ]);
    const hashes = ids.map((i) => (i.level === 0 ? last : nodes.shift()));
    if (hashes.some((h) => h === undefined)) {
      throw new TranslogError('store', `the store lacks a subtree hash of the log of size ${size}`);
    }
    return { range: { size, hashes: hashes as Uint8Array[] }, lastLeafHash: last! };
  }

  async getEntries(from: number, to: number): Promise<LogEntry[]> {
    return (await this.store.logEntries(from, to)).map((e) =>
      parseEntry(JSON.parse(decode(e.canonical)), `entry ${e.index}`),
    );
  }

  async getLeafHashes(from: number, to: number): Promise<Uint8Array[]> {
    return (await this.store.logEntries(from, to)).map((e) => e.leafHash);
  }

  getNodeHashes(ids: readonly NodeId[]): Promise<(Uint8Array | undefined)[]> {
    return this.store.logNodes(ids);
  }

  async getCheckpoint(size: number): Promise<string | undefined> {
    return (await this.store.checkpoints()).find((c) => c.size === size)?.note;
  }

  async latestCheckpoint(): Promise<string | undefined> {
    return (await this.store.latestCheckpoint())?.note;
  }

  async checkpointSizes(min: number, max: number): Promise<number[]> {
    return (await this.getCheckpoints(min, max)).map((c) => c.size);
  }

  /** One read of the checkpoints; the first one saved of each size, as `getCheckpoint` returns. */
  async getCheckpoints(min: number, max: number): Promise<{ size: number; note: string }[]> {
    const out: { size: number; note: string }[] = [];
    for (const c of await this.store.checkpoints()) {
      if (c.size >= min && c.size <= max && out[out.length - 1]?.size !== c.size) out.push(c);
    }
    return out;
  }
}

const signing = new WeakMap<KbsLogStore, Promise<string>>();

/**
 * Signs a checkpoint of the log as it is now, unless the latest checkpoint already covers it. One
 * signing at a time per log (the timer, exports and admin requests may ask at once).
 */
export function signCheckpointNow(
  store: KbsStore,
  log: KbsLogStore,
  origin: string,
  signer: NoteSigner,
): Promise<string> {
  const run = (signing.get(log) ?? Promise.resolve(''))
    .catch(() => '')
    .then(() => signOnce(store, log, origin, signer));
  signing.set(log, run);
  return run;
}

async function signOnce(
  store: KbsStore,
  log: KbsLogStore,
  origin: string,
  signer: NoteSigner,
): Promise<string> {
  const head = await log.head();
  const latest = await store.latestCheckpoint();
  if (latest && latest.size === head.range.size) return latest.note;
  const note = await signNote(
    checkpointText({ origin, size: head.range.size, root: await rangeRoot(head.range) }),
    [signer],
  );
  await store.saveCheckpoint(head.range.size, note);
  return note;
}
