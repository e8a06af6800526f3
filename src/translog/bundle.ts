/**
 * The export bundle (JSON lines; specified in docs/transparency-log.md) and its offline verification:
 * the hash chain, the recomputed Merkle roots at every checkpoint, the checkpoint signatures, the
 * consistency between checkpoints and the inclusion proofs. Every failure is a TranslogError saying
 * which entry or checkpoint and why; verification goes on after a failure so that one run lists them all.
 */
import { equalBytes, toHex } from '../util/bytes.js';
import { type Checkpoint, parseCheckpoint, verifyCheckpoint } from './checkpoint.js';
import { entryLeafHash, type LogEntry, parseEntry, ZERO_HASH_HEX } from './entry.js';
import { TranslogError, type TranslogErrorCode, type TranslogErrorWhere } from './errors.js';
import {
  appendToRange,
  type CompactRange,
  EMPTY_RANGE,
  ProofBuilder,
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

/**
 * Reads a bundle's JSON lines, checking the structure only (entries are well-formed, sizes are integers,
 * the header's range matches the entries). Nothing is trusted until verifyBundle accepts it.
 */
export function parseBundle(text: string): Bundle {
  const raw = text.split('\n');
  if (raw[raw.length - 1] === '') raw.pop();
  let header: { origin: string; from: number; to: number } | undefined;
  let range: CompactRange | undefined;
  const entries: LogEntry[] = [];
  const checkpoints: string[] = [];
  const inclusion: InclusionProofLine[] = [];
  const consistency: ConsistencyProofLine[] = [];
  for (const [i, l] of raw.entries()) {
    const line = i + 1;
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
        header = { origin: o.origin as string, from: o.from as number, to: o.to as number };
        break;
      case 'range':
        if (range) bad('a second range');
        try {
          range = parseRange(o);
        } catch (e) {
          bad((e as Error).message);
        }
        break;
      case 'entry':
        try {
          entries.push(parseEntry(o.entry, `line ${line}`));
        } catch (e) {
          const err = e as TranslogError;
          throw new TranslogError(err.code, err.message, { ...err.where, line });
        }
        break;
      case 'checkpoint':
        if (typeof o.note !== 'string')
          bad('a checkpoint line is {"type":"checkpoint","note":"<signed note>"}');
        checkpoints.push(o.note as string);
        break;
      case 'inclusion':
        if (!isSize(o.index) || !isSize(o.size)) bad('an inclusion line needs integer index and size');
        inclusion.push({ index: o.index as number, size: o.size as number, proof: proofOf(o.proof, line) });
        break;
      case 'consistency':
        if (!isSize(o.size1) || !isSize(o.size2)) bad('a consistency line needs integer size1 and size2');
        consistency.push({
          size1: o.size1 as number,
          size2: o.size2 as number,
          proof: proofOf(o.proof, line),
        });
        break;
      default:
        bad(`unknown line type ${JSON.stringify(o.type)}`);
    }
  }
  if (!header) throw new TranslogError('bad-bundle', 'the bundle is empty');
  const { origin, from, to } = header;
  if (entries.length !== to - from) {
    throw new TranslogError(
      'bad-bundle',
      `the header announces entries ${from}…${to - 1} (${to - from}) but the bundle holds ${entries.length}`,
    );
  }
  if (from > 0 && !range)
    throw new TranslogError('bad-bundle', `a bundle starting at entry ${from} needs a range line`);
  if (range && range.size !== from) {
    throw new TranslogError(
      'bad-bundle',
      `the range line has size ${range.size}, not the first index ${from}`,
    );
  }
  return { origin, from, to, ...(range ? { range } : {}), entries, checkpoints, inclusion, consistency };
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

async function hashEntries(entries: readonly LogEntry[]): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (let i = 0; i < entries.length; i += 4096) {
    out.push(...(await Promise.all(entries.slice(i, i + 4096).map(entryLeafHash))));
  }
  return out;
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
  const bundle = parseBundle(typeof input === 'string' ? input : formatBundle(input));
  const verifiers: readonly NoteVerifier[] =
    typeof key === 'string'
      ? [await parseVerifierKey(key)]
      : Array.isArray(key)
        ? key
        : [key as NoteVerifier];
  const origin = options.origin ?? verifiers[0]?.name;
  if (!origin) throw new TranslogError('bad-key', 'no verifier key given');
  const maxErrors = options.maxErrors ?? 100;
  const errors: TranslogError[] = [];
  let truncated = false;
  const fail = (code: TranslogErrorCode, message: string, where: TranslogErrorWhere = {}): void => {
    if (errors.length < maxErrors) errors.push(new TranslogError(code, message, where));
    else truncated = true;
  };
  const { from, to, entries } = bundle;
  if (bundle.origin !== origin) {
    fail(
      'bad-checkpoint',
      `the bundle is of log ${JSON.stringify(bundle.origin)}, but the key is for ${JSON.stringify(origin)}`,
    );
  }

  // 1. Signatures: only checkpoints signed by the trusted key count.
  const signed = new Map<number, Uint8Array>();
  for (const note of bundle.checkpoints) {
    let claimed: Checkpoint | undefined;
    try {
      claimed = parseCheckpoint(note);
    } catch {
      // Reported by verifyCheckpoint below, without a size.
    }
    const at = claimed ? `checkpoint ${claimed.size}` : 'a checkpoint';
    try {
      const c = await verifyCheckpoint(note, verifiers, { origin });
      const other = signed.get(c.size);
      if (other && !equalBytes(other, c.root)) {
        fail(
          'inconsistent-checkpoints',
          `two checkpoints of size ${c.size} are signed with different roots ${toHex(other)} and ${toHex(c.root)}: the log forked`,
          { checkpoint: c.size },
        );
      } else signed.set(c.size, c.root);
    } catch (e) {
      if (!(e instanceof TranslogError)) throw e;
      fail(e.code, `${at}: ${e.message}`, claimed ? { checkpoint: claimed.size } : {});
    }
  }
  const sizes = [...signed.keys()].sort((a, b) => a - b);
  const rejected = new Set<number>();

  // 2. The chain, and the roots recomputed at every signed size.
  const leaves = await hashEntries(entries);
  let range = bundle.range ?? EMPTY_RANGE;
  const computed = new Map<number, Uint8Array>();
  if (signed.has(from)) computed.set(from, await rangeRoot(range));
  for (let p = 0; p < entries.length; p++) {
    const e = entries[p]!;
    const expected = from + p;
    if (e.index !== expected) {
      const why =
        e.index > expected
          ? `entries ${expected}…${e.index - 1} are missing`
          : 'it is out of order or repeated';
      fail('index-gap', `entry ${expected} of the bundle has index ${e.index}: ${why}`, { entry: expected });
    }
    const prevHash = p > 0 ? toHex(leaves[p - 1]!) : from === 0 ? ZERO_HASH_HEX : undefined;
    if (prevHash !== undefined && e.prevHash !== prevHash) {
      fail(
        'chain-broken',
        p > 0
          ? `entry ${expected}: prevHash ${e.prevHash} is not the leaf hash ${prevHash} of entry ${expected - 1}: an entry was changed, removed or reordered`
          : `entry 0: prevHash must be ${ZERO_HASH_HEX}`,
        { entry: expected },
      );
    }
    range = (await appendToRange(range, leaves[p]!)).range;
    if (signed.has(range.size)) computed.set(range.size, await rangeRoot(range));
  }

  // 3. Each signed root against the entries.
  const uncovered: number[] = [];
  for (const s of sizes) {
    if (s > to) {
      rejected.add(s);
      fail(
        'checkpoint-beyond-entries',
        `checkpoint ${s} commits to ${s} entries, but the bundle ends at entry ${to - 1}: entries ${to}…${s - 1} are withheld`,
        { checkpoint: s },
      );
    } else if (s < from) {
      uncovered.push(s);
    } else if (!equalBytes(computed.get(s)!, signed.get(s)!)) {
      rejected.add(s);
      fail(
        'root-mismatch',
        `checkpoint ${s}: the signed root ${toHex(signed.get(s)!)} is not the root ${toHex(computed.get(s)!)} of the bundle's entries 0…${s - 1}`,
        { checkpoint: s },
      );
    }
  }
  if (signed.size === 0) {
    fail(
      'no-checkpoint',
      'no checkpoint in the bundle is signed by the trusted key, so nothing in it is authenticated',
    );
  } else if ((sizes[sizes.length - 1] ?? 0) < to) {
    const last = Math.max(from, sizes[sizes.length - 1] ?? 0);
    fail('unsigned-entries', `entries ${last}…${to - 1} are not covered by any signed checkpoint`, {
      entry: last,
    });
  }

  // 4. Consistency between successive checkpoints, recomputed from the entries (when they start at 0).
  if (from === 0) {
    const builder = new ProofBuilder({ leafHashes: async (a, b) => leaves.slice(a, b) });
    const inside = sizes.filter((s) => s >= 1 && s <= to);
    for (let i = 1; i < inside.length; i++) {
      const [a, b] = [inside[i - 1]!, inside[i]!];
      try {
        await verifyConsistency(a, b, signed.get(a)!, signed.get(b)!, await builder.consistencyProof(a, b));
      } catch (e) {
        if (!(e instanceof TranslogError)) throw e;
        fail(
          'inconsistent-checkpoints',
          `checkpoints ${a} and ${b} are not of one append-only log: ${e.message}`,
          {
            checkpoint: b,
          },
        );
      }
    }
  }

  // 5. Consistency proofs carried by the bundle; they also vouch for checkpoints before its entries.
  let consistencyProofs = 0;
  const linked = new Set<number>();
  for (const p of bundle.consistency) {
    const r1 = signed.get(p.size1);
    const r2 = signed.get(p.size2);
    if (!r1 || !r2) {
      fail(
        'proof-without-checkpoint',
        `consistency proof ${p.size1}→${p.size2}: no verified checkpoint of size ${r1 ? p.size2 : p.size1}`,
        {
          checkpoint: r1 ? p.size2 : p.size1,
        },
      );
      continue;
    }
    try {
      await verifyConsistency(p.size1, p.size2, r1, r2, p.proof);
      consistencyProofs++;
      if (p.size2 >= from && p.size2 <= to && !rejected.has(p.size2)) linked.add(p.size1);
    } catch (e) {
      if (!(e instanceof TranslogError)) throw e;
      fail(
        e.code === 'bad-proof' ? 'bad-proof' : 'inconsistent-checkpoints',
        `consistency proof ${p.size1}→${p.size2}: ${e.message}`,
        {
          checkpoint: p.size2,
        },
      );
    }
  }
  for (const s of uncovered) {
    if (!linked.has(s)) {
      rejected.add(s);
      fail(
        'checkpoint-not-covered',
        `checkpoint ${s} lies before the bundle's first entry ${from} and no consistency proof ties it to a later verified checkpoint`,
        { checkpoint: s },
      );
    }
  }

  // 6. Inclusion proofs of entries.
  let inclusionProofs = 0;
  for (const p of bundle.inclusion) {
    const root = signed.get(p.size);
    if (!root) {
      fail(
        'proof-without-checkpoint',
        `inclusion proof of entry ${p.index}: no verified checkpoint of size ${p.size}`,
        {
          entry: p.index,
          checkpoint: p.size,
        },
      );
      continue;
    }
    if (p.index < from || p.index >= to) {
      fail('bad-proof', `inclusion proof of entry ${p.index}: the entry is not in the bundle`, {
        entry: p.index,
      });
      continue;
    }
    try {
      await verifyInclusion(p.index, p.size, leaves[p.index - from]!, p.proof, root);
      inclusionProofs++;
    } catch (e) {
      if (!(e instanceof TranslogError)) throw e;
      fail(
        e.code === 'bad-proof' ? 'bad-proof' : 'bad-inclusion-proof',
        `inclusion proof of entry ${p.index} in checkpoint ${p.size}: ${e.message}`,
        {
          entry: p.index,
          checkpoint: p.size,
        },
      );
    }
  }

  const checkpoints = sizes.map(
    (s): CheckpointStatus => ({
      size: s,
      root: toHex(signed.get(s)!),
      status: rejected.has(s) ? 'rejected' : 'verified',
    }),
  );
  return {
    ok: errors.length === 0 && !truncated,
    origin,
    entries: { from, to },
    checkpoints,
    inclusionProofs,
    consistencyProofs,
    errors,
    ...(truncated ? { truncated } : {}),
  };
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
