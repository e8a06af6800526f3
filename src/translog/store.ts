/**
 * Storage-independent parts of the log: the head a writer keeps beside the latest entry, the pure
 * `prepareAppend` that a writer runs inside its own database transaction, the `LogStore` interface a
 * reader needs, a complete in-memory store, and `TransparencyLog`, which serves roots, proofs and
 * exports from any LogStore.
 */
import { toHex } from '../util/index.js';
import { BUNDLE_FORMAT, STREAMED_LAYOUT } from './bundle.js';
import { parseCheckpoint, signCheckpoint } from './checkpoint.js';
import { type LogEntry, type LogEntryFields, nextEntry } from './entry.js';
import { TranslogError } from './errors.js';
import {
  appendToRange,
  type CompactRange,
  EMPTY_RANGE,
  type NodeHash,
  type NodeId,
  ProofBuilder,
  type ProofBuilderOptions,
  parseHash,
  parseRange,
  rangeRoot,
  serializeRange,
} from './merkle.js';
import type { NoteSigner } from './note.js';

/** What a writer needs to append: the compact range and the last entry's leaf hash. O(log n) hashes. */
export interface LogHead {
  range: CompactRange;
  /** Leaf hash of entry size-1; null for an empty log. */
  lastLeafHash: Uint8Array | null;
}

export interface SerializedHead {
  size: number;
  hashes: string[];
  last: string | null;
}

export const EMPTY_HEAD: LogHead = Object.freeze({ range: EMPTY_RANGE, lastLeafHash: null });

export function serializeHead(head: LogHead): SerializedHead {
  return {
    size: head.range.size,
    hashes: head.range.hashes.map(toHex),
    last: head.lastLeafHash ? toHex(head.lastLeafHash) : null,
  };
}

/** Reads a head stored as JSON (e.g. a column beside the latest entry). */
export function parseHead(value: unknown): LogHead {
  const v = value as Partial<SerializedHead> | null;
  const range = parseRange(v);
  const last = v?.last;
  if ((range.size === 0) !== (last === null)) {
    throw new TranslogError('bad-range', 'a log head has a last leaf hash exactly when it is not empty');
  }
  return {
    range,
    lastLeafHash: last === null || last === undefined ? null : parseHash(last, 'last', 'bad-range'),
  };
}

/** Everything one append writes, in one transaction. */
export interface PreparedAppend {
  /** New entries, indices head.size … head.size+n-1. */
  entries: LogEntry[];
  leafHashes: Uint8Array[];
  /** Perfect subtrees completed by these entries; a store may keep them to serve proofs in O(log n). */
  nodes: NodeHash[];
  /** The head after the append, to store beside the last entry. */
  head: LogHead;
  root: Uint8Array;
  /** The signed checkpoint of the new size, when a signer was given. */
  checkpoint?: string;
}

export interface PrepareAppendOptions {
  /** Signs a checkpoint of the new tree. */
  signer?: NoteSigner;
  /** Checkpoint origin; defaults to the signer's key name. */
  origin?: string;
}

/**
 * Builds the next entries after `head`, their leaf hashes, the new head and (with a signer) the signed
 * checkpoint. Pure: nothing is stored; the caller writes it all in the transaction that makes the change
 * it records, and must check that `head` was still the latest one (e.g. by a unique index on `index`).
 */
export async function prepareAppend(
  head: LogHead,
  fields: readonly LogEntryFields[],
  options: PrepareAppendOptions = {},
): Promise<PreparedAppend> {
  let range = head.range;
  let prev = head.lastLeafHash ? { index: range.size - 1, leafHash: head.lastLeafHash } : null;
  const entries: LogEntry[] = [];
  const leafHashes: Uint8Array[] = [];
  const nodes: NodeHash[] = [];
  for (const f of fields) {
    const { entry, leafHash } = await nextEntry(prev, f);
    const step = await appendToRange(range, leafHash);
    range = step.range;
    nodes.push(...step.completed);
    entries.push(entry);
    leafHashes.push(leafHash);
    prev = { index: entry.index, leafHash };
  }
  const root = await rangeRoot(range);
  const newHead: LogHead = { range, lastLeafHash: prev?.leafHash ?? null };
  const out: PreparedAppend = { entries, leafHashes, nodes, head: newHead, root };
  if (options.signer) {
    out.checkpoint = await signCheckpoint(
      { origin: options.origin ?? options.signer.name, size: range.size, root },
      options.signer,
    );
  }
  return out;
}

/**
 * What a reader needs from storage. All ranges are half-open [from, to) and must lie within size();
 * implementations return exactly to-from items, in index order.
 */
export interface LogStore {
  size(): Promise<number>;
  /** The head after the last entry (for writers and for checks). */
  head(): Promise<LogHead>;
  getEntries(from: number, to: number): Promise<LogEntry[]>;
  getLeafHashes(from: number, to: number): Promise<Uint8Array[]>;
  /** Stored perfect-subtree hashes (from PreparedAppend.nodes); undefined where not kept. Optional. */
  getNodeHashes?(ids: readonly NodeId[]): Promise<(Uint8Array | undefined)[]>;
  /** The signed checkpoint of exactly this size, if one was signed. */
  getCheckpoint(size: number): Promise<string | undefined>;
  /** The signed checkpoint of the largest size. */
  latestCheckpoint(): Promise<string | undefined>;
  /** Sizes that have a signed checkpoint within [min, max], ascending. */
  checkpointSizes(min: number, max: number): Promise<number[]>;
  /**
   * The checkpoints of sizes within [min, max], ascending, one per size, in one read. Optional: without
   * it an export asks `getCheckpoint` once per size.
   */
  getCheckpoints?(min: number, max: number): Promise<{ size: number; note: string }[]>;
}

function checkRange(from: number, to: number, size: number): void {
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || from > to || to > size) {
    throw new TranslogError('store', `range [${from}, ${to}) is not within the log of size ${size}`);
  }
}

/** A complete LogStore in memory: the reference the SQL stores are tested against. */
export class MemoryLogStore implements LogStore {
  private readonly entries: LogEntry[] = [];
  private readonly leaves: Uint8Array[] = [];
  private readonly nodes = new Map<string, Uint8Array>();
  private readonly checkpoints = new Map<number, string>();
  private current: LogHead = EMPTY_HEAD;
  private queue: Promise<unknown> = Promise.resolve();

  /** Keep completed subtrees of at least this level (default 1: all; Infinity: none). */
  constructor(private readonly nodeMinLevel = 1) {}

  /** Appends entries (one transaction), signing a checkpoint of the new size when a signer is given. */
  append(fields: readonly LogEntryFields[], options: PrepareAppendOptions = {}): Promise<PreparedAppend> {
    // Appends are serialised, as a database transaction would be.
    const run = this.queue.then(async () => {
      const prepared = await prepareAppend(this.current, fields, options);
      this.commit(prepared);
      return prepared;
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Stores a prepared append; refuses one prepared from another head (a lost race). */
  commit(p: PreparedAppend): void {
    const base = p.head.range.size - p.entries.length;
    if (base !== this.entries.length) {
      throw new TranslogError(
        'store',
        `append prepared at size ${base}, but the log has ${this.entries.length}`,
      );
    }
    this.entries.push(...p.entries);
    this.leaves.push(...p.leafHashes);
    for (const n of p.nodes)
      if (n.level >= this.nodeMinLevel) this.nodes.set(`${n.level}/${n.index}`, n.hash);
    if (p.checkpoint) this.checkpoints.set(p.head.range.size, p.checkpoint);
    this.current = p.head;
  }

  /** Adds a checkpoint signed elsewhere (e.g. a periodic signer). */
  putCheckpoint(size: number, note: string): void {
    this.checkpoints.set(size, note);
  }

  async size(): Promise<number> {
    return this.entries.length;
  }

  async head(): Promise<LogHead> {
    return this.current;
  }

  async getEntries(from: number, to: number): Promise<LogEntry[]> {
    checkRange(from, to, this.entries.length);
    return this.entries.slice(from, to);
  }

  async getLeafHashes(from: number, to: number): Promise<Uint8Array[]> {
    checkRange(from, to, this.leaves.length);
    return this.leaves.slice(from, to);
  }

  async getNodeHashes(ids: readonly NodeId[]): Promise<(Uint8Array | undefined)[]> {
    return ids.map((id) => this.nodes.get(`${id.level}/${id.index}`));
  }

  async getCheckpoint(size: number): Promise<string | undefined> {
    return this.checkpoints.get(size);
  }

  async latestCheckpoint(): Promise<string | undefined> {
    let best = -1;
    for (const s of this.checkpoints.keys()) if (s > best) best = s;
    return best < 0 ? undefined : this.checkpoints.get(best);
  }

  async checkpointSizes(min: number, max: number): Promise<number[]> {
    return [...this.checkpoints.keys()].filter((s) => s >= min && s <= max).sort((a, b) => a - b);
  }
}

export interface InclusionProofLine {
  index: number;
  size: number;
  proof: Uint8Array[];
}

export interface ConsistencyProofLine {
  size1: number;
  size2: number;
  proof: Uint8Array[];
}

/** A portable export of part of a log; `docs/transparency-log.md` gives its JSON-lines form. */
export interface Bundle {
  origin: string;
  /** Entries [from, to). */
  from: number;
  to: number;
  /** The compact range at size `from` (required when from > 0: it lets the roots be recomputed). */
  range?: CompactRange;
  entries: LogEntry[];
  /** Signed checkpoint notes. */
  checkpoints: string[];
  inclusion: InclusionProofLine[];
  consistency: ConsistencyProofLine[];
}

export interface ExportOptions {
  from?: number;
  /** Default: the size of the latest checkpoint, so that every exported entry is signed for. */
  to?: number;
  /** Add inclusion proofs of these entries against the checkpoint at `to` ('all' for every entry). */
  inclusion?: number[] | 'all';
  /** Add consistency proofs between successive exported checkpoints. */
  consistency?: boolean;
}

/** Serves roots, proofs and exports from a LogStore. */
export class TransparencyLog {
  private readonly proofs: ProofBuilder;

  constructor(
    readonly store: LogStore,
    readonly origin: string,
    options: ProofBuilderOptions = {},
  ) {
    this.proofs = new ProofBuilder(
      {
        leafHashes: (from, to) => store.getLeafHashes(from, to),
        ...(store.getNodeHashes ? { nodeHashes: (ids) => store.getNodeHashes!(ids) } : {}),
      },
      options,
    );
  }

  private async within(size: number): Promise<void> {
    const n = await this.store.size();
    if (!Number.isSafeInteger(size) || size < 0 || size > n) {
      throw new TranslogError('bad-proof', `tree size ${size} is not within the log of size ${n}`);
    }
  }

  async root(size?: number): Promise<Uint8Array> {
    const n = size ?? (await this.store.size());
    await this.within(n);
    return this.proofs.root(n);
  }

  async inclusionProof(index: number, size: number): Promise<Uint8Array[]> {
    await this.within(size);
    return this.proofs.inclusionProof(index, size);
  }

  async consistencyProof(size1: number, size2: number): Promise<Uint8Array[]> {
    await this.within(size2);
    return this.proofs.consistencyProof(size1, size2);
  }

  /** The compact range at `size`: the perfect subtrees of its binary decomposition. */
  async rangeAt(size: number): Promise<CompactRange> {
    await this.within(size);
    const hashes: Uint8Array[] = [];
    let start = 0;
    for (let level = 52; level >= 0; level--) {
      const w = 2 ** level;
      if (start + w <= size) {
        hashes.push(await this.proofs.node(level, start / w));
        start += w;
      }
    }
    return { size, hashes };
  }

  /** An entry with its inclusion proof against the checkpoint of `size` (default the latest one). */
  async entryWithProof(
    index: number,
    size?: number,
  ): Promise<{ entry: LogEntry; proof: Uint8Array[]; checkpoint: string }> {
    const note =
      size === undefined ? await this.store.latestCheckpoint() : await this.store.getCheckpoint(size);
    if (!note)
      throw new TranslogError('proof-without-checkpoint', `no checkpoint of size ${size ?? '(latest)'}`);
    const n = size ?? parseCheckpoint(note).size;
    const [entry] = await this.store.getEntries(index, index + 1);
    if (!entry) throw new TranslogError('store', `entry ${index} is missing`);
    return { entry, proof: await this.inclusionProof(index, n), checkpoint: note };
  }

  /** What an export covers: the entry range, its checkpoints and the entries to prove. */
  private async plan(options: ExportOptions): Promise<ExportPlan> {
    const from = options.from ?? 0;
    let to = options.to;
    if (to === undefined) {
      const latest = await this.store.latestCheckpoint();
      to = latest ? parseCheckpoint(latest).size : 0;
    }
    await this.within(to);
    if (!Number.isSafeInteger(from) || from < 0 || from > to) {
      throw new TranslogError('bad-proof', `export range [${from}, ${to}) is not within the log`);
    }
    const checkpoints = this.store.getCheckpoints
      ? await this.store.getCheckpoints(from, to)
      : await Promise.all(
          (await this.store.checkpointSizes(from, to)).map(async (size) => ({
            size,
            note: (await this.store.getCheckpoint(size))!,
          })),
        );
    const wanted: ReadonlySet<number> | 'all' =
      options.inclusion === 'all' ? 'all' : new Set(options.inclusion ?? []);
    if (wanted === 'all' ? to > from : wanted.size > 0) {
      if (!checkpoints.some((c) => c.size === to)) {
        throw new TranslogError(
          'proof-without-checkpoint',
          `no checkpoint of size ${to} to prove inclusion against`,
        );
      }
    }
    if (wanted !== 'all') {
      for (const i of wanted) {
        if (!Number.isSafeInteger(i) || i < from || i >= to) {
          throw new TranslogError(
            'bad-proof',
            `entry ${i} is not among the exported entries ${from}…${to - 1}`,
          );
        }
      }
    }
    return { from, to, checkpoints, wanted };
  }

  /** Consistency proofs between successive checkpoints of a plan (none from the empty tree). */
  private async consistencyLines(plan: ExportPlan): Promise<ConsistencyProofLine[]> {
    const out: ConsistencyProofLine[] = [];
    const sizes = plan.checkpoints.map((c) => c.size);
    for (let i = 1; i < sizes.length; i++) {
      const [a, b] = [sizes[i - 1]!, sizes[i]!];
      if (a > 0) out.push({ size1: a, size2: b, proof: await this.consistencyProof(a, b) });
    }
    return out;
  }

  /** Entries [a, b) with the inclusion proofs the plan asks for, each proof beside its entry. */
  private async chunk(
    plan: ExportPlan,
    a: number,
    b: number,
  ): Promise<{ entries: LogEntry[]; proofs: (Uint8Array[] | undefined)[] }> {
    const entries = await this.store.getEntries(a, b);
    const { wanted } = plan;
    let proofs: (Uint8Array[] | undefined)[] = [];
    if (wanted === 'all') proofs = await this.proofs.inclusionProofs(a, b, plan.to);
    else {
      proofs = await Promise.all(
        entries.map((_, k) => (wanted.has(a + k) ? this.proofs.inclusionProof(a + k, plan.to) : undefined)),
      );
    }
    return { entries, proofs };
  }

  /**
   * An export held in memory. For large logs use `exportLines`, which produces the bundle as it is
   * written.
   */
  async export(options: ExportOptions = {}): Promise<Bundle> {
    const plan = await this.plan(options);
    const { from, to } = plan;
    const entries: LogEntry[] = [];
    const inclusion: InclusionProofLine[] = [];
    for (let a = from; a < to; a += EXPORT_CHUNK) {
      const c = await this.chunk(plan, a, Math.min(to, a + EXPORT_CHUNK));
      entries.push(...c.entries);
      c.proofs.forEach((proof, k) => {
        if (proof) inclusion.push({ index: a + k, size: to, proof });
      });
    }
    return {
      origin: this.origin,
      from,
      to,
      ...(from > 0 ? { range: await this.rangeAt(from) } : {}),
      entries,
      checkpoints: plan.checkpoints.map((c) => c.note),
      inclusion,
      consistency: options.consistency ? await this.consistencyLines(plan) : [],
    };
  }

  /**
   * The bundle as JSON-lines text, produced a slice of entries at a time as the consumer pulls it, in
   * the streamed layout (docs/transparency-log.md): header, range, checkpoints and consistency proofs
   * first, then each entry followed by its inclusion proof. Memory stays bounded whatever the size of
   * the log, and a verifier can check it as it arrives. Each yielded string is whole lines.
   */
  async *exportLines(options: ExportOptions = {}): AsyncGenerator<string, void, undefined> {
    const plan = await this.plan(options);
    const { from, to } = plan;
    const head: Record<string, unknown>[] = [
      { type: 'header', format: BUNDLE_FORMAT, origin: this.origin, from, to, layout: STREAMED_LAYOUT },
    ];
    if (from > 0) head.push({ type: 'range', ...serializeRange(await this.rangeAt(from)) });
    for (const c of plan.checkpoints) head.push({ type: 'checkpoint', note: c.note });
    yield jsonLines(head);
    if (options.consistency) {
      const sizes = plan.checkpoints.map((c) => c.size).filter((s) => s > 0);
      for (let i = 0; i + 1 < sizes.length; i += EXPORT_CHUNK) {
        const group = sizes.slice(i, i + EXPORT_CHUNK + 1);
        const proofs = await Promise.all(
          group.slice(1).map(async (b, k) => {
            const a = group[k]!;
            return {
              type: 'consistency',
              size1: a,
              size2: b,
              proof: (await this.consistencyProof(a, b)).map(toHex),
            };
          }),
        );
        yield jsonLines(proofs);
      }
    }
    for (let a = from; a < to; a += EXPORT_CHUNK) {
      const { entries, proofs } = await this.chunk(plan, a, Math.min(to, a + EXPORT_CHUNK));
      let text = '';
      for (const [k, entry] of entries.entries()) {
        text += `${JSON.stringify({ type: 'entry', entry })}\n`;
        const proof = proofs[k];
        if (proof) {
          text += `${JSON.stringify({ type: 'inclusion', index: a + k, size: to, proof: proof.map(toHex) })}\n`;
        }
      }
      yield text;
    }
  }
}

/** Entries read (and proved) per store call during an export. */
const EXPORT_CHUNK = 256;

interface ExportPlan {
  from: number;
  to: number;
  checkpoints: { size: number; note: string }[];
  wanted: ReadonlySet<number> | 'all';
}

function jsonLines(lines: readonly unknown[]): string {
  return lines.map((l) => `${JSON.stringify(l)}\n`).join('');
}
