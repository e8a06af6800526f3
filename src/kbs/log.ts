/**
 * The broker's transparency log on top of its store: entries are appended by the store inside the
 * transaction of the change they record (with `buildLogEntry`, synchronous because SQLite transactions
 * cannot await), and checkpoints are signed periodically from an incrementally maintained Merkle range.
 */
import { createHash } from 'node:crypto';
import {
  appendToRange,
  type CompactRange,
  checkpointText,
  EMPTY_RANGE,
  type LogEntry,
  type LogHead,
  type LogStore,
  type NoteSigner,
  parseEntry,
  rangeRoot,
  signNote,
  ZERO_HASH_HEX,
} from '../translog/index.js';
import { canonicalizeBytes } from '../util/jcs.js';
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

/** The translog library's reader interface over the broker's store, with an incremental Merkle range. */
export class KbsLogStore implements LogStore {
  private range: CompactRange = EMPTY_RANGE;
  private last: Uint8Array | null = null;

  constructor(private readonly store: KbsStore) {}

  size(): Promise<number> {
    return this.store.logSize();
  }

  private folding: Promise<LogHead> | undefined;

  /**
   * Folds the leaves appended since the last call into the compact range (O(new · log n)). Calls are
   * serialised: two folds interleaving across awaits would add the same leaves twice.
   */
  head(): Promise<LogHead> {
    const run = (this.folding ?? Promise.resolve()).catch(() => undefined).then(() => this.fold());
    this.folding = run;
    return run;
  }

  private async fold(): Promise<LogHead> {
    const n = await this.store.logSize();
    let range = n < this.range.size ? EMPTY_RANGE : this.range;
    let last = n < this.range.size ? null : this.last;
    const BATCH = 10_000;
    for (let from = range.size; from < n; from += BATCH) {
      for (const e of await this.store.logEntries(from, Math.min(n, from + BATCH))) {
        range = (await appendToRange(range, e.leafHash)).range;
        last = e.leafHash;
      }
    }
    this.range = range;
    this.last = last;
    return { range, lastLeafHash: last };
  }

  async getEntries(from: number, to: number): Promise<LogEntry[]> {
    return (await this.store.logEntries(from, to)).map((e) =>
      parseEntry(JSON.parse(decode(e.canonical)), `entry ${e.index}`),
    );
  }

  async getLeafHashes(from: number, to: number): Promise<Uint8Array[]> {
    return (await this.store.logEntries(from, to)).map((e) => e.leafHash);
  }

  async getCheckpoint(size: number): Promise<string | undefined> {
    return (await this.store.checkpoints()).find((c) => c.size === size)?.note;
  }

  async latestCheckpoint(): Promise<string | undefined> {
    return (await this.store.latestCheckpoint())?.note;
  }

  async checkpointSizes(min: number, max: number): Promise<number[]> {
    return (await this.store.checkpoints())
      .map((c) => c.size)
      .filter((s) => s >= min && s <= max)
      .sort((a, b) => a - b);
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
