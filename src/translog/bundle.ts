/**
 * The export bundle (JSON lines; specified in docs/transparency-log.md) and its offline verification:
 * the hash chain, the recomputed Merkle roots at every checkpoint, the checkpoint signatures, the
 * consistency between checkpoints and the inclusion proofs. Every failure is a TranslogError saying
 * which entry or checkpoint and why; verification goes on after a failure so that one run lists them all.
 */
import { equalBytes, toHex } from '../util/index.js';
import { type Checkpoint, parseCheckpoint, verifyCheckpoint } from './checkpoint.js';
import { entryLeafHash, type LogEntry, parseEntry, ZERO_HASH_HEX } from './entry.js';
import { TranslogError, type TranslogErrorCode, type TranslogErrorWhere } from './errors.js';
import {
  appendToRange,
  type CompactRange,
  EMPTY_RANGE,
  parseHash,
  parseRange,
  rangeRoot,
  serializeRange,
  verifyConsistency,
  verifyInclusion,
} from './merkle.js';
import { type NoteVerifier, parseVerifierKey } from './note.js';
import type { Bundle, ConsistencyProofLine, InclusionProofLine } from './store.js';

export const BUNDLE_FORMAT = 'cloister-translog-bundle/v1';
/**
 * Header `layout` of a bundle whose checkpoint, consistency and range lines all precede the entries and
 * whose inclusion proofs each follow their entry directly: it can be verified in bounded memory.
 */
export const STREAMED_LAYOUT = 'streamed';

/** The JSON-lines text of a bundle: a header, the range (if from > 0), entries, checkpoints, proofs. */
export function formatBundle(b: Bundle): string {
  const lines: unknown[] = [
    { type: 'header', format: BUNDLE_FORMAT, origin: b.origin, from: b.from, to: b.to },
  ];
  if (b.range) lines.push({ type: 'range', ...serializeRange(b.range) });
  for (const entry of b.entries) lines.push({ type: 'entry', entry });
  for (const note of b.checkpoints) lines.push({ type: 'checkpoint', note });
  for (const p of b.inclusion)
    lines.push({ type: 'inclusion', index: p.index, size: p.size, proof: p.proof.map(toHex) });
  for (const p of b.consistency) {
    lines.push({ type: 'consistency', size1: p.size1, size2: p.size2, proof: p.proof.map(toHex) });
  }
  return lines.map((l) => `${JSON.stringify(l)}\n`).join('');
}

function isSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

function proofOf(v: unknown, line: number): Uint8Array[] {
  if (!Array.isArray(v))
    throw new TranslogError('bad-bundle', `line ${line}: proof must be a list of hex hashes`, { line });
  return v.map((h, i) => {
    try {
      return parseHash(h, `proof element ${i}`);
    } catch (e) {
      throw new TranslogError('bad-bundle', `line ${line}: ${(e as Error).message}`, { line });
    }
  });
}

interface BundleHeader {
  origin: string;
  from: number;
  to: number;
  streamed: boolean;
}

/** One line of a bundle, checked for structure only. */
type BundleLine =
  | ({ type: 'header' } & BundleHeader)
  | { type: 'range'; range: CompactRange }
  | { type: 'entry'; entry: LogEntry }
  | { type: 'checkpoint'; note: string }
  | ({ type: 'inclusion' } & InclusionProofLine)
  | ({ type: 'consistency' } & ConsistencyProofLine);

/** Parses line number `line` (1-based) of a bundle; a malformed line throws a TranslogError naming it. */
function parseLine(l: string, line: number): BundleLine {
  const bad: (why: string) => never = (why) => {
    throw new TranslogError('bad-bundle', `line ${line}: ${why}`, { line });
  };
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(l);
  } catch {
    bad('not JSON');
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) bad('not a JSON object');
  if (line === 1 && o.type !== 'header')
    bad(`the first line is the header ({"type":"header","format":"${BUNDLE_FORMAT}",…})`);
  switch (o.type) {
    case 'header':
      if (line !== 1) bad('a second header');
      if (o.format !== BUNDLE_FORMAT) bad(`format ${JSON.stringify(o.format)} is not ${BUNDLE_FORMAT}`);
      if (typeof o.origin !== 'string' || o.origin === '') bad('the header needs an origin');
      if (!isSize(o.from) || !isSize(o.to) || o.from > o.to) bad('the header needs from ≤ to');
      if (o.layout !== undefined && o.layout !== STREAMED_LAYOUT)
        bad(`layout ${JSON.stringify(o.layout)} is not "${STREAMED_LAYOUT}"`);
      return {
        type: 'header',
        origin: o.origin as string,
        from: o.from as number,
        to: o.to as number,
        streamed: o.layout === STREAMED_LAYOUT,
      };
    case 'range':
      try {
        return { type: 'range', range: parseRange(o) };
      } catch (e) {
        return bad((e as Error).message);
      }
    case 'entry':
      try {
        return { type: 'entry', entry: parseEntry(o.entry, `line ${line}`) };
      } catch (e) {
        const err = e as TranslogError;
        throw new TranslogError(err.code, err.message, { ...err.where, line });
      }
    case 'checkpoint':
      if (typeof o.note !== 'string')
        bad('a checkpoint line is {"type":"checkpoint","note":"<signed note>"}');
      return { type: 'checkpoint', note: o.note as string };
    case 'inclusion':
      if (!isSize(o.index) || !isSize(o.size)) bad('an inclusion line needs integer index and size');
      return {
        type: 'inclusion',
        index: o.index as number,
        size: o.size as number,
        proof: proofOf(o.proof, line),
      };
    case 'consistency':
      if (!isSize(o.size1) || !isSize(o.size2)) bad('a consistency line needs integer size1 and size2');
      return {
        type: 'consistency',
        size1: o.size1 as number,
        size2: o.size2 as number,
        proof: proofOf(o.proof, line),
      };
    default:
      return bad(`unknown line type ${JSON.stringify(o.type)}`);
  }
}

function splitLines(text: string): string[] {
  const raw = text.split('\n');
  if (raw[raw.length - 1] === '') raw.pop();
  return raw;
}

/** Structural checks of the whole bundle, once every line has been read. */
function checkComplete(header: BundleHeader | undefined, entries: number, range: CompactRange | undefined) {
  if (!header) throw new TranslogError('bad-bundle', 'the bundle is empty');
  const { from, to } = header;
  if (entries !== to - from) {
    throw new TranslogError(
      'bad-bundle',
      `the header announces entries ${from}…${to - 1} (${to - from}) but the bundle holds ${entries}`,
    );
  }
  checkRangeLine(header, range);
}

function checkRangeLine(header: BundleHeader, range: CompactRange | undefined): void {
  if (header.from > 0 && !range)
    throw new TranslogError('bad-bundle', `a bundle starting at entry ${header.from} needs a range line`);
  if (range && range.size !== header.from) {
    throw new TranslogError(
      'bad-bundle',
      `the range line has size ${range.size}, not the first index ${header.from}`,
    );
  }
}

/**
 * Reads a bundle's JSON lines into memory, checking the structure only (entries are well-formed, sizes
 * are integers, the header's range matches the entries). Nothing is trusted until verifyBundle accepts
 * it. For large bundles, verify the lines as they come with `verifyBundleLines` instead.
 */
export function parseBundle(text: string): Bundle {
  let header: BundleHeader | undefined;
  let range: CompactRange | undefined;
  const entries: LogEntry[] = [];
  const checkpoints: string[] = [];
  const inclusion: InclusionProofLine[] = [];
  const consistency: ConsistencyProofLine[] = [];
  for (const [i, l] of splitLines(text).entries()) {
    const line = i + 1;
    const p = parseLine(l, line);
    switch (p.type) {
      case 'header':
        header = p;
        break;
      case 'range':
        if (range) throw new TranslogError('bad-bundle', `line ${line}: a second range`, { line });
        range = p.range;
        break;
      case 'entry':
        entries.push(p.entry);
        break;
      case 'checkpoint':
        checkpoints.push(p.note);
        break;
      case 'inclusion':
        inclusion.push({ index: p.index, size: p.size, proof: p.proof });
        break;
      case 'consistency':
        consistency.push({ size1: p.size1, size2: p.size2, proof: p.proof });
        break;
    }
  }
  checkComplete(header, entries.length, range);
  const { origin, from, to } = header!;
  return { origin, from, to, ...(range ? { range } : {}), entries, checkpoints, inclusion, consistency };
}

/**
 * Splits a byte stream (a file, stdin, an HTTP response body) into the lines of a bundle, as UTF-8
 * text without the final newline, holding at most one line at a time. A line longer than
 * `maxLineBytes` (default 16 MiB; an entry is a few hundred bytes) is refused, so that a file without
 * newlines cannot exhaust memory.
 */
export async function* readBundleLines(
  chunks: AsyncIterable<Uint8Array>,
  maxLineBytes = 16 * 1024 * 1024,
): AsyncGenerator<string, void, undefined> {
  const decoder = new TextDecoder();
  let parts: Uint8Array[] = [];
  let length = 0;
  let line = 0;
  const take = (last: Uint8Array): string => {
    line++;
    const all = new Uint8Array(length + last.length);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    all.set(last, at);
    parts = [];
    length = 0;
    return decoder.decode(all);
  };
  const tooLong = () =>
    new TranslogError('bad-bundle', `line ${line + 1} is longer than ${maxLineBytes} bytes`, {
      line: line + 1,
    });
  for await (const chunk of chunks) {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
      if (length + nl - start > maxLineBytes) throw tooLong();
      yield take(chunk.subarray(start, nl));
      start = nl + 1;
    }
    if (start < chunk.length) {
      // The chunk may be reused by its producer: keep a copy of the unfinished line.
      parts.push(chunk.slice(start));
      length += chunk.length - start;
      if (length > maxLineBytes) throw tooLong();
    }
  }
  if (length > 0) yield take(new Uint8Array(0));
}

export interface CheckpointStatus {
  size: number;
  root: string;
  /** verified: signed by the key and matching the entries; rejected: see errors. */
  status: 'verified' | 'rejected';
}

export interface BundleReport {
  ok: boolean;
  origin: string;
  entries: { from: number; to: number };
  checkpoints: CheckpointStatus[];
  /** Proofs from the bundle that verified. */
  inclusionProofs: number;
  consistencyProofs: number;
  errors: TranslogError[];
  /** More errors were found than are listed. */
  truncated?: boolean;
}

export interface VerifyBundleOptions {
  /** The log's origin; default: the key name of the (first) verifier key, as C2SP recommends. */
  origin?: string;
  /** At most this many errors are listed (default 100). */
  maxErrors?: number;
}

/**
 * The checks in the order the report lists their failures, whatever the order of the lines that
 * raised them (see "Verification" in docs/transparency-log.md).
 */
const PHASES = [
  'origin',
  'signature',
  'chain',
  'roots',
  'recomputed',
  'consistency',
  'covered',
  'inclusion',
] as const;
type Phase = (typeof PHASES)[number];

/** Entries hashed and checked together (bounded memory, parallel hashing). */
const BATCH = 1024;

/** Leaf hashes packed 32 bytes each, for bundles whose layout needs them kept until the end. */
class LeafList {
  private readonly blocks: Uint8Array[] = [];
  length = 0;
  private static readonly PER_BLOCK = 4096;

  push(h: Uint8Array): void {
    const b = Math.floor(this.length / LeafList.PER_BLOCK);
    if (b === this.blocks.length) this.blocks.push(new Uint8Array(32 * LeafList.PER_BLOCK));
    this.blocks[b]!.set(h, 32 * (this.length % LeafList.PER_BLOCK));
    this.length++;
  }

  get(i: number): Uint8Array {
    const at = 32 * (i % LeafList.PER_BLOCK);
    return this.blocks[Math.floor(i / LeafList.PER_BLOCK)]!.subarray(at, at + 32);
  }
}

interface PendingEntry {
  entry: LogEntry;
  /** Position in the bundle: the entry should have index from + position. */
  position: number;
  /** Inclusion proofs of this entry that followed it directly (streamed layout). */
  proofs: InclusionProofLine[];
}

/**
 * Verifies a bundle line by line. In the streamed layout (header `"layout":"streamed"`: checkpoints,
 * consistency proofs and range before the entries, each inclusion proof directly after its entry) it
 * holds the checkpoints, the compact range and one batch of entries, whatever the bundle's length;
 * otherwise it also keeps 32 bytes per entry (the leaf hashes) until the end, since a later line may
 * need any of them.
 */
export class BundleVerifier {
  private line = 0;
  private header: BundleHeader | undefined;
  private range: CompactRange | undefined;
  private entryLines = 0;
  private readonly errors = new Map<Phase, TranslogError[]>(PHASES.map((p) => [p, []]));
  private errorCount = 0;
  private truncated = false;
  /** Verified checkpoints: size → root (the first one of a size). */
  private readonly signed = new Map<number, Uint8Array>();
  private pending: PendingEntry[] = [];
  private prevLeaf: Uint8Array | undefined;
  private processed = 0;
  private leaves: LeafList | undefined;
  /** The compact range after the entries processed so far (streamed layout). */
  private running: CompactRange | undefined;
  private readonly computed = new Map<number, Uint8Array>();
  private readonly laterInclusion: InclusionProofLine[] = [];
  private readonly laterConsistency: ConsistencyProofLine[] = [];
  /** Verified consistency proofs (size1, size2), to tie in checkpoints before a partial bundle. */
  private readonly joined: [number, number][] = [];
  private inclusionProofs = 0;
  private consistencyProofs = 0;

  private constructor(
    private readonly verifiers: readonly NoteVerifier[],
    private readonly origin: string,
    private readonly maxErrors: number,
  ) {}

  static async create(
    key: string | NoteVerifier | readonly NoteVerifier[],
    options: VerifyBundleOptions = {},
  ): Promise<BundleVerifier> {
    const verifiers: readonly NoteVerifier[] =
      typeof key === 'string'
        ? [await parseVerifierKey(key)]
        : Array.isArray(key)
          ? key
          : [key as NoteVerifier];
    const origin = options.origin ?? verifiers[0]?.name;
    if (!origin) throw new TranslogError('bad-key', 'no verifier key given');
    return new BundleVerifier(verifiers, origin, options.maxErrors ?? 100);
  }

  private fail(phase: Phase, code: TranslogErrorCode, message: string, where: TranslogErrorWhere = {}): void {
    // Each phase keeps at most maxErrors: the report lists the first maxErrors in phase order.
    const list = this.errors.get(phase)!;
    if (list.length < this.maxErrors) list.push(new TranslogError(code, message, where));
    else this.truncated = true;
    this.errorCount++;
  }

  /** Reads the next line of the bundle (without its newline). */
  async push(text: string): Promise<void> {
    const line = ++this.line;
    const p = parseLine(text, line);
    const header = this.header;
    if (p.type === 'header') {
      this.header = p;
      if (!p.streamed) this.leaves = new LeafList();
      if (p.origin !== this.origin) {
        this.fail(
          'origin',
          'bad-checkpoint',
          `the bundle is of log ${JSON.stringify(p.origin)}, but the key is for ${JSON.stringify(this.origin)}`,
        );
      }
      return;
    }
    // parseLine refuses any other first line.
    const { from, to, streamed } = header!;
    const bad = (why: string) => new TranslogError('bad-bundle', `line ${line}: ${why}`, { line });
    if (streamed && this.entryLines > 0 && p.type !== 'entry' && p.type !== 'inclusion') {
      throw bad(`in a streamed bundle, ${p.type} lines come before the entries`);
    }
    switch (p.type) {
      case 'range':
        if (this.range) throw bad('a second range');
        this.range = p.range;
        break;
      case 'checkpoint':
        await this.checkpoint(p.note);
        break;
      case 'consistency':
        if (this.signed.has(p.size1) && this.signed.has(p.size2)) await this.consistency(p);
        else this.laterConsistency.push(p);
        break;
      case 'entry':
        if (this.entryLines === to - from) {
          throw bad(`the header announces ${to - from} entries, and this is one more`);
        }
        // Flushed before the next entry rather than after this one: its inclusion proofs may follow.
        if (this.pending.length >= BATCH) await this.flush();
        this.pending.push({ entry: p.entry, position: this.entryLines++, proofs: [] });
        break;
      case 'inclusion': {
        const last = this.pending[this.pending.length - 1];
        if (streamed) {
          if (!last || from + last.position !== p.index) {
            throw bad(
              `in a streamed bundle, the inclusion proof of entry ${p.index} directly follows that entry`,
            );
          }
          last.proofs.push(p);
        } else {
          await this.flush();
          if (this.signed.has(p.size) && p.index >= from && p.index < from + this.processed) {
            await this.inclusion([p], [this.leaves!.get(p.index - from)]);
          } else this.laterInclusion.push(p);
        }
        break;
      }
    }
  }

  private async checkpoint(note: string): Promise<void> {
    let claimed: Checkpoint | undefined;
    try {
      claimed = parseCheckpoint(note);
    } catch {
      // Reported by verifyCheckpoint below, without a size.
    }
    const at = claimed ? `checkpoint ${claimed.size}` : 'a checkpoint';
    try {
      const c = await verifyCheckpoint(note, this.verifiers, { origin: this.origin });
      const other = this.signed.get(c.size);
      if (other && !equalBytes(other, c.root)) {
        this.fail(
          'signature',
          'inconsistent-checkpoints',
          `two checkpoints of size ${c.size} are signed with different roots ${toHex(other)} and ${toHex(c.root)}: the log forked`,
          { checkpoint: c.size },
        );
      } else this.signed.set(c.size, c.root);
    } catch (e) {
      if (!(e instanceof TranslogError)) throw e;
      this.fail('signature', e.code, `${at}: ${e.message}`, claimed ? { checkpoint: claimed.size } : {});
    }
  }

  /** Hashes and checks the pending entries: index, chain, running range, attached inclusion proofs. */
  private async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    const { from, streamed } = this.header!;
    if (streamed && this.running === undefined) {
      checkRangeLine(this.header!, this.range);
      this.running = this.range ?? EMPTY_RANGE;
      if (this.signed.has(from)) this.computed.set(from, await rangeRoot(this.running));
    }
    const leaves = await Promise.all(batch.map((p) => entryLeafHash(p.entry)));
    const proofs: InclusionProofLine[] = [];
    const proofLeaves: Uint8Array[] = [];
    for (const [k, { entry: e, position: p, proofs: attached }] of batch.entries()) {
      const leaf = leaves[k]!;
      const expected = from + p;
      if (e.index !== expected) {
        const why =
          e.index > expected
            ? `entries ${expected}…${e.index - 1} are missing`
            : 'it is out of order or repeated';
        this.fail('chain', 'index-gap', `entry ${expected} of the bundle has index ${e.index}: ${why}`, {
          entry: expected,
        });
      }
      const prevHash =
        this.prevLeaf !== undefined ? toHex(this.prevLeaf) : from === 0 ? ZERO_HASH_HEX : undefined;
      if (prevHash !== undefined && e.prevHash !== prevHash) {
        this.fail(
          'chain',
          'chain-broken',
          p > 0
            ? `entry ${expected}: prevHash ${e.prevHash} is not the leaf hash ${prevHash} of entry ${expected - 1}: an entry was changed, removed or reordered`
            : `entry 0: prevHash must be ${ZERO_HASH_HEX}`,
          { entry: expected },
        );
      }
      this.prevLeaf = leaf;
      this.leaves?.push(leaf);
      if (this.running) {
        this.running = (await appendToRange(this.running, leaf)).range;
        if (this.signed.has(this.running.size))
          this.computed.set(this.running.size, await rangeRoot(this.running));
      }
      for (const proof of attached) {
        proofs.push(proof);
        proofLeaves.push(leaf);
      }
    }
    this.processed += batch.length;
    await this.inclusion(proofs, proofLeaves);
  }

  /** Verifies inclusion proofs (in parallel), each with the leaf hash of the entry it names. */
  private async inclusion(
    proofs: readonly InclusionProofLine[],
    leaves: readonly (Uint8Array | undefined)[],
  ): Promise<void> {
    const results = await Promise.all(
      proofs.map(async (p, i): Promise<[TranslogErrorCode, string] | undefined> => {
        const root = this.signed.get(p.size);
        if (!root) {
          return [
            'proof-without-checkpoint',
            `inclusion proof of entry ${p.index}: no verified checkpoint of size ${p.size}`,
          ];
        }
        const leaf = leaves[i];
        if (!leaf)
          return ['bad-proof', `inclusion proof of entry ${p.index}: the entry is not in the bundle`];
        try {
          await verifyInclusion(p.index, p.size, leaf, p.proof, root);
          return undefined;
        } catch (e) {
          if (!(e instanceof TranslogError)) throw e;
          return [
            e.code === 'bad-proof' ? 'bad-proof' : 'bad-inclusion-proof',
            `inclusion proof of entry ${p.index} in checkpoint ${p.size}: ${e.message}`,
          ];
        }
      }),
    );
    for (const [i, r] of results.entries()) {
      const p = proofs[i]!;
      if (r === undefined) this.inclusionProofs++;
      else if (r[0] === 'bad-proof' && !leaves[i]) this.fail('inclusion', r[0], r[1], { entry: p.index });
      else this.fail('inclusion', r[0], r[1], { entry: p.index, checkpoint: p.size });
    }
  }

  private async consistency(p: ConsistencyProofLine): Promise<void> {
    const r1 = this.signed.get(p.size1);
    const r2 = this.signed.get(p.size2);
    if (!r1 || !r2) {
      const size = r1 ? p.size2 : p.size1;
      this.fail(
        'consistency',
        'proof-without-checkpoint',
        `consistency proof ${p.size1}→${p.size2}: no verified checkpoint of size ${size}`,
        { checkpoint: size },
      );
      return;
    }
    try {
      await verifyConsistency(p.size1, p.size2, r1, r2, p.proof);
      this.consistencyProofs++;
      this.joined.push([p.size1, p.size2]);
    } catch (e) {
      if (!(e instanceof TranslogError)) throw e;
      this.fail(
        'consistency',
        e.code === 'bad-proof' ? 'bad-proof' : 'inconsistent-checkpoints',
        `consistency proof ${p.size1}→${p.size2}: ${e.message}`,
        { checkpoint: p.size2 },
      );
    }
  }

  /** Runs the checks that need the whole bundle and returns the report. */
  async finish(): Promise<BundleReport> {
    await this.flush();
    checkComplete(this.header, this.entryLines, this.range);
    const { from, to } = this.header!;
    const { signed, computed } = this;
    if (this.leaves) {
      // Not streamed: the signed sizes may have come after the entries, so replay the leaves now.
      let range = this.range ?? EMPTY_RANGE;
      if (signed.has(from)) computed.set(from, await rangeRoot(range));
      for (let p = 0; p < this.leaves.length; p++) {
        range = (await appendToRange(range, this.leaves.get(p))).range;
        if (signed.has(range.size)) computed.set(range.size, await rangeRoot(range));
      }
    } else if (this.running === undefined) {
      // A streamed bundle without entries.
      if (signed.has(from)) computed.set(from, await rangeRoot(this.range ?? EMPTY_RANGE));
    }

    const sizes = [...signed.keys()].sort((a, b) => a - b);
    const rejected = new Set<number>();
    const mismatched = new Set<number>();
    const uncovered: number[] = [];
    for (const s of sizes) {
      if (s > to) {
        rejected.add(s);
        this.fail(
          'roots',
          'checkpoint-beyond-entries',
          `checkpoint ${s} commits to ${s} entries, but the bundle ends at entry ${to - 1}: entries ${to}…${s - 1} are withheld`,
          { checkpoint: s },
        );
      } else if (s < from) {
        uncovered.push(s);
      } else if (!equalBytes(computed.get(s)!, signed.get(s)!)) {
        rejected.add(s);
        mismatched.add(s);
        this.fail(
          'roots',
          'root-mismatch',
          `checkpoint ${s}: the signed root ${toHex(signed.get(s)!)} is not the root ${toHex(computed.get(s)!)} of the bundle's entries 0…${s - 1}`,
          { checkpoint: s },
        );
      }
    }
    if (signed.size === 0) {
      this.fail(
        'roots',
        'no-checkpoint',
        'no checkpoint in the bundle is signed by the trusted key, so nothing in it is authenticated',
      );
    } else if ((sizes[sizes.length - 1] ?? 0) < to) {
      const last = Math.max(from, sizes[sizes.length - 1] ?? 0);
      this.fail(
        'roots',
        'unsigned-entries',
        `entries ${last}…${to - 1} are not covered by any signed checkpoint`,
        {
          entry: last,
        },
      );
    }

    // Successive checkpoints of a bundle from entry 0 are consistent exactly when both roots are those
    // of the entries (a consistency proof computed from the entries rebuilds both of those roots), so
    // this needs no proof and no leaf hashes.
    if (from === 0) {
      const inside = sizes.filter((s) => s >= 1 && s <= to);
      for (let i = 1; i < inside.length; i++) {
        const [a, b] = [inside[i - 1]!, inside[i]!];
        const off = [a, b].filter((s) => mismatched.has(s));
        if (off.length > 0) {
          this.fail(
            'recomputed',
            'inconsistent-checkpoints',
            `checkpoints ${a} and ${b} are not of one append-only log: the bundle's entries lead to another root at size ${off.join(' and ')} than the signed one`,
            { checkpoint: b },
          );
        }
      }
    }

    for (const p of this.laterConsistency) await this.consistency(p);
    const linked = new Set(
      this.joined.filter(([, s2]) => s2 >= from && s2 <= to && !rejected.has(s2)).map(([s1]) => s1),
    );
    for (const s of uncovered) {
      if (!linked.has(s)) {
        rejected.add(s);
        this.fail(
          'covered',
          'checkpoint-not-covered',
          `checkpoint ${s} lies before the bundle's first entry ${from} and no consistency proof ties it to a later verified checkpoint`,
          { checkpoint: s },
        );
      }
    }

    const later = this.laterInclusion;
    await this.inclusion(
      later,
      later.map((p) =>
        this.leaves && p.index >= from && p.index < to ? this.leaves.get(p.index - from) : undefined,
      ),
    );

    const errors = PHASES.flatMap((p) => this.errors.get(p)!).slice(0, this.maxErrors);
    const truncated = this.truncated || this.errorCount > this.maxErrors;
    return {
      ok: this.errorCount === 0,
      origin: this.origin,
      entries: { from, to },
      checkpoints: sizes.map(
        (s): CheckpointStatus => ({
          size: s,
          root: toHex(signed.get(s)!),
          status: rejected.has(s) ? 'rejected' : 'verified',
        }),
      ),
      inclusionProofs: this.inclusionProofs,
      consistencyProofs: this.consistencyProofs,
      errors,
      ...(truncated ? { truncated } : {}),
    };
  }
}

/** Verifies a bundle given as lines (e.g. `readBundleLines` over a file or an HTTP body). */
export async function verifyBundleLines(
  lines: AsyncIterable<string> | Iterable<string>,
  key: string | NoteVerifier | readonly NoteVerifier[],
  options: VerifyBundleOptions = {},
): Promise<BundleReport> {
  const v = await BundleVerifier.create(key, options);
  for await (const l of lines) await v.push(l);
  return v.finish();
}

/**
 * Verifies a bundle offline against the log's verifier key(s). `ok` only when every entry is chained,
 * every signed checkpoint matches the entries, checkpoints are consistent with each other, every given
 * proof verifies, and every entry is covered by a verified checkpoint.
 */
export async function verifyBundle(
  input: Bundle | string,
  key: string | NoteVerifier | readonly NoteVerifier[],
  options: VerifyBundleOptions = {},
): Promise<BundleReport> {
  // A bundle object gets the same structural checks as a file (entries well-formed, counts, range).
  return verifyBundleLines(splitLines(typeof input === 'string' ? input : formatBundle(input)), key, options);
}

/**
 * Verifies one entry as a receipt: the entry, its inclusion proof and the signed checkpoint it was proved
 * against. Returns the verified checkpoint.
 */
export async function verifyEntryProof(
  entry: unknown,
  proof: readonly Uint8Array[],
  checkpointNote: string,
  key: string | NoteVerifier | readonly NoteVerifier[],
  options: { origin?: string } = {},
): Promise<Checkpoint> {
  const e = parseEntry(entry);
  const c = await verifyCheckpoint(checkpointNote, key, options);
  await verifyInclusion(e.index, c.size, await entryLeafHash(e), proof, c.root);
  return c;
}
