/**
 * The RFC 9162 §2.1 Merkle tree over leaf hashes: an incremental compact range (the right edge of the
 * tree, O(log n) hashes) to append in O(log n) and read the root, proof generation from a source of leaf
 * and perfect-subtree hashes, and proof verification exactly as §2.1.3.2 and §2.1.4.2 describe it.
 *
 * Sizes and indices are JavaScript numbers limited to Number.MAX_SAFE_INTEGER; arithmetic is done with
 * division rather than bit operators, which would wrap at 2^31.
 */
import { equalBytes, fromHex, toHex } from '../util/index.js';
import { TranslogError } from './errors.js';
import { emptyRoot, HASH_SIZE, nodeHash } from './hash.js';

/** A perfect subtree: the 2^level leaves starting at index·2^level. Level 0 is a leaf. */
export interface NodeId {
  level: number;
  index: number;
}

/** A perfect subtree with its hash, as `appendToRange` reports the ones an append completes. */
export interface NodeHash extends NodeId {
  hash: Uint8Array;
}

/**
 * The roots of the perfect subtrees that make up a tree of `size` leaves, left (largest) to right
 * (smallest): one per set bit of `size`. Enough to append and to compute the root.
 */
export interface CompactRange {
  readonly size: number;
  readonly hashes: readonly Uint8Array[];
}

export interface SerializedRange {
  size: number;
  hashes: string[];
}

export const EMPTY_RANGE: CompactRange = Object.freeze({ size: 0, hashes: Object.freeze([]) });

function isSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

function popcount(n: number): number {
  let c = 0;
  for (let x = n; x > 0; x = Math.floor(x / 2)) c += x % 2;
  return c;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && popcount(n) === 1;
}

/** The largest power of two strictly below n (n ≥ 2): the split point of RFC 9162 §2.1.1. */
export function splitPoint(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/**
 * Appends one leaf hash; returns the new range and the perfect subtrees (level ≥ 1) that this leaf
 * completed, so that a store may keep them for O(log n) proofs. Costs one hash per completed subtree:
 * amortised one, at most log2(n).
 */
export async function appendToRange(
  range: CompactRange,
  leaf: Uint8Array,
): Promise<{ range: CompactRange; completed: NodeHash[] }> {
  if (leaf.length !== HASH_SIZE) throw new TranslogError('bad-range', `a leaf hash has ${HASH_SIZE} bytes`);
  if (range.size >= Number.MAX_SAFE_INTEGER) throw new TranslogError('bad-range', 'the log is full');
  const hashes = range.hashes.slice();
  const completed: NodeHash[] = [];
  const newSize = range.size + 1;
  let node = leaf;
  let level = 0;
  // Each trailing 1-bit of the old size is a subtree of the same height as the one being carried.
  for (let s = range.size; s % 2 === 1; s = Math.floor(s / 2)) {
    node = await nodeHash(hashes.pop()!, node);
    level++;
    completed.push({ level, index: newSize / 2 ** level - 1, hash: node });
  }
  hashes.push(node);
  return { range: { size: newSize, hashes }, completed };
}

/** MTH of the range's leaves: the right edge folded from the smallest subtree up. */
export async function rangeRoot(range: CompactRange): Promise<Uint8Array> {
  const h = range.hashes;
  if (h.length === 0) return emptyRoot();
  let r = h[h.length - 1]!;
  for (let i = h.length - 2; i >= 0; i--) r = await nodeHash(h[i]!, r);
  return r;
}

export function serializeRange(range: CompactRange): SerializedRange {
  return { size: range.size, hashes: range.hashes.map(toHex) };
}

/** Reads a serialised range, checking that it has exactly one 32-byte hash per set bit of its size. */
export function parseRange(value: unknown): CompactRange {
  const v = value as Partial<SerializedRange> | null;
  if (typeof v !== 'object' || v === null || !isSize(v.size) || !Array.isArray(v.hashes)) {
    throw new TranslogError('bad-range', 'a compact range is {"size": n, "hashes": [hex, …]}');
  }
  if (v.hashes.length !== popcount(v.size)) {
    throw new TranslogError(
      'bad-range',
      `a compact range of size ${v.size} has ${popcount(v.size)} hashes, not ${v.hashes.length}`,
    );
  }
  const hashes = v.hashes.map((h) => parseHash(h, 'compact range hash', 'bad-range'));
  return { size: v.size, hashes };
}

export function parseHash(
  h: unknown,
  what: string,
  code: 'bad-range' | 'bad-proof' = 'bad-proof',
): Uint8Array {
  if (typeof h !== 'string' || !/^[0-9a-f]{64}$/.test(h)) {
    throw new TranslogError(code, `${what} must be 64 lower-case hex digits`);
  }
  return fromHex(h);
}

// ---------------------------------------------------------------------------------------------------
// Proof generation

/** Where proof generation reads hashes from. `nodeHashes` is optional: missing nodes are computed. */
export interface MerkleSource {
  /** Leaf hashes of [from, to), in order; the caller only asks for complete ranges below the size. */
  leafHashes(from: number, to: number): Promise<Uint8Array[]>;
  /** Stored perfect-subtree hashes, `undefined` where the source does not keep one. */
  nodeHashes?(ids: readonly NodeId[]): Promise<(Uint8Array | undefined)[]>;
}

export interface ProofBuilderOptions {
  /** Subtrees of this level or less are computed from their leaves in one read (default 5: 32 leaves). */
  batchLevel?: number;
  /**
   * Subtrees of this level or more are kept in memory once computed (default 5: about one hash per 16
   * leaves, some 30 MB for 10^7 entries); those a request reads from the store in its batch are not.
   */
  cacheMinLevel?: number;
}

/**
 * Computes subtree hashes, roots and proofs over a MerkleSource. Perfect subtrees never change in an
 * append-only log, so those computed are cached; a proof then costs O(log n) cached or stored subtree
 * hashes plus at most 2^batchLevel leaf reads per level below the cache.
 */
export class ProofBuilder {
  private readonly cache = new Map<number, Uint8Array>();
  private readonly batchLevel: number;
  private readonly cacheMinLevel: number;

  constructor(
    private readonly source: MerkleSource,
    options: ProofBuilderOptions = {},
  ) {
    this.batchLevel = options.batchLevel ?? 5;
    this.cacheMinLevel = options.cacheMinLevel ?? 5;
  }

  /** Hash of the perfect subtree (level, index); `known` holds the stored hashes read for this request. */
  async node(level: number, index: number, known?: ReadonlyMap<number, Uint8Array>): Promise<Uint8Array> {
    const key = nodeKey(level, index);
    let h = this.cache.get(key) ?? known?.get(key);
    if (h) return h;
    // A request that brings `known` has already asked the store for every node it needs.
    if (level > 0 && known === undefined && this.source.nodeHashes) {
      h = (await this.source.nodeHashes([{ level, index }]))[0];
    }
    if (!h) {
      if (level <= this.batchLevel) h = await this.fromLeaves(level, index);
      else {
        const [l, r] = await Promise.all([
          this.node(level - 1, 2 * index, known),
          this.node(level - 1, 2 * index + 1, known),
        ]);
        h = await nodeHash(l, r);
      }
    }
    if (level >= this.cacheMinLevel) this.cache.set(key, h);
    return h;
  }

  /** A small subtree computed from its leaves, read in one call. */
  private async fromLeaves(level: number, index: number): Promise<Uint8Array> {
    const width = 2 ** level;
    const leaves = await this.source.leafHashes(index * width, (index + 1) * width);
    if (leaves.length !== width || leaves.some((l) => l.length !== HASH_SIZE)) {
      throw new TranslogError(
        'store',
        `the store returned ${leaves.length} leaf hashes for [${index * width}, ${(index + 1) * width})`,
      );
    }
    let row = leaves;
    while (row.length > 1) {
      const next: Promise<Uint8Array>[] = [];
      for (let i = 0; i < row.length; i += 2) next.push(nodeHash(row[i]!, row[i + 1]!));
      row = await Promise.all(next);
    }
    return row[0]!;
  }

  /** MTH of leaves [from, to), where `from` is aligned as in the RFC 9162 tree (a multiple of the split). */
  async rangeHash(from: number, to: number, known?: ReadonlyMap<number, Uint8Array>): Promise<Uint8Array> {
    const n = to - from;
    if (n <= 0) return emptyRoot();
    if (isPowerOfTwo(n)) {
      if (from % n !== 0) throw new RangeError(`[${from}, ${to}) is not an aligned subtree`);
      return this.node(Math.log2(n), from / n, known);
    }
    const k = splitPoint(n);
    const [l, r] = await Promise.all([
      this.rangeHash(from, from + k, known),
      this.rangeHash(from + k, to, known),
    ]);
    return nodeHash(l, r);
  }

  /**
   * The MTHs of the ranges, after reading every stored subtree they need in one call to the source and
   * the single leaves they need in a few contiguous reads (rather than one read per leaf).
   */
  private async rangeHashes(ranges: readonly [number, number][]): Promise<Uint8Array[]> {
    const seen = new Set<number>();
    const ids: NodeId[] = [];
    const leaves: number[] = [];
    for (const [a, b] of ranges) {
      for (const id of perfectSubtrees(a, b)) {
        const key = nodeKey(id.level, id.index);
        if (seen.has(key) || this.cache.has(key)) continue;
        seen.add(key);
        if (id.level === 0) leaves.push(id.index);
        else if (this.source.nodeHashes) ids.push(id);
      }
    }
    const known = new Map<number, Uint8Array>();
    const got = ids.length > 0 && this.source.nodeHashes ? await this.source.nodeHashes(ids) : [];
    for (const [i, id] of ids.entries()) {
      const h = got[i];
      if (h && h.length === HASH_SIZE) known.set(nodeKey(id.level, id.index), h);
    }
    for (const [start, end] of leafSpans(leaves)) {
      const hs = await this.source.leafHashes(start, end);
      if (hs.length !== end - start || hs.some((h) => h.length !== HASH_SIZE)) {
        throw new TranslogError(
          'store',
          `the store returned ${hs.length} leaf hashes for [${start}, ${end})`,
        );
      }
      for (const [i, h] of hs.entries()) known.set(nodeKey(0, start + i), h);
    }
    return Promise.all(ranges.map(([a, b]) => this.rangeHash(a, b, known)));
  }

  async root(size: number): Promise<Uint8Array> {
    if (size === 0) return emptyRoot();
    return (await this.rangeHashes([[0, size]]))[0]!;
  }

  /** PATH(index, D[size]) of RFC 9162 §2.1.3.1. */
  inclusionProof(index: number, size: number): Promise<Uint8Array[]> {
    if (!isSize(index) || !isSize(size) || index >= size) {
      throw new TranslogError('bad-proof', `no inclusion proof for index ${index} in a tree of ${size}`);
    }
    return this.rangeHashes(inclusionRanges(index, size));
  }

  /**
   * PATH(i, D[size]) for every i in [from, to), sharing the reads: a run of neighbouring entries needs
   * about one stored hash per entry plus O(log size) shared ones, read in one call to the source.
   */
  async inclusionProofs(from: number, to: number, size: number): Promise<Uint8Array[][]> {
    if (!isSize(from) || !isSize(to) || !isSize(size) || from > to || to > size) {
      throw new TranslogError('bad-proof', `no inclusion proofs for [${from}, ${to}) in a tree of ${size}`);
    }
    const paths: [number, number][][] = [];
    const index = new Map<string, number>();
    const unique: [number, number][] = [];
    for (let i = from; i < to; i++) {
      const path = inclusionRanges(i, size);
      for (const r of path) {
        const key = `${r[0]}:${r[1]}`;
        if (!index.has(key)) {
          index.set(key, unique.length);
          unique.push(r);
        }
      }
      paths.push(path);
    }
    const hashes = await this.rangeHashes(unique);
    return paths.map((path) => path.map((r) => hashes[index.get(`${r[0]}:${r[1]}`)!]!));
  }

  /** PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1; empty when the sizes are equal. */
  consistencyProof(size1: number, size2: number): Promise<Uint8Array[]> {
    if (!isSize(size1) || !isSize(size2) || size1 < 1 || size1 > size2) {
      throw new TranslogError('bad-proof', `no consistency proof from size ${size1} to size ${size2}`);
    }
    return this.rangeHashes(consistencyRanges(size1, size2));
  }
}

function nodeKey(level: number, index: number): number {
  return index * 64 + level;
}

/** Sorted leaf indices grouped into half-open spans, joining indices less than 32 apart. */
function leafSpans(indices: number[]): [number, number][] {
  const sorted = indices.slice().sort((a, b) => a - b);
  const spans: [number, number][] = [];
  for (const i of sorted) {
    const last = spans[spans.length - 1];
    if (last && i - last[1] < 32) last[1] = i + 1;
    else spans.push([i, i + 1]);
  }
  return spans;
}

/** The perfect subtrees whose hashes make up the MTH of [from, to), left to right. */
export function perfectSubtrees(from: number, to: number): NodeId[] {
  const out: NodeId[] = [];
  let a = from;
  while (a < to) {
    let w = 1;
    // The largest aligned power of two that starts at a and fits.
    while (a % (w * 2) === 0 && a + w * 2 <= to) w *= 2;
    out.push({ level: Math.log2(w), index: a / w });
    a += w;
  }
  return out;
}

/** The leaf ranges whose MTHs make up PATH(m, D[n]), bottom to top. */
export function inclusionRanges(m: number, n: number): [number, number][] {
  const out: [number, number][] = [];
  let start = 0;
  const stack: [number, number][] = [];
  // Walk down from the root, remembering each sibling; the proof lists them from the leaf up.
  while (n > 1) {
    const k = splitPoint(n);
    if (m < k) {
      stack.push([start + k, start + n]);
      n = k;
    } else {
      stack.push([start, start + k]);
      m -= k;
      start += k;
      n -= k;
    }
  }
  for (let i = stack.length - 1; i >= 0; i--) out.push(stack[i]!);
  return out;
}

/** The leaf ranges whose MTHs make up PROOF(m, D[n]) = SUBPROOF(m, D[n], true). */
export function consistencyRanges(m: number, n: number): [number, number][] {
  const stack: [number, number][] = [];
  let start = 0;
  let complete = true;
  for (;;) {
    if (m === n) {
      if (!complete) stack.push([start, start + m]);
      break;
    }
    const k = splitPoint(n);
    if (m <= k) {
      stack.push([start + k, start + n]);
      n = k;
    } else {
      stack.push([start, start + k]);
      m -= k;
      start += k;
      n -= k;
      complete = false;
    }
  }
  return stack.reverse();
}

// ---------------------------------------------------------------------------------------------------
// Proof verification

function checkHash(h: Uint8Array, what: string): void {
  if (h.length !== HASH_SIZE) throw new TranslogError('bad-proof', `${what} has ${h.length} bytes, not 32`);
}

/** The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1–4), or a 'bad-proof' error. */
export async function rootFromInclusionProof(
  index: number,
  size: number,
  leaf: Uint8Array,
  proof: readonly Uint8Array[],
): Promise<Uint8Array> {
  if (!isSize(index) || !isSize(size))
    throw new TranslogError('bad-proof', 'index and size must be integers');
  if (index >= size)
    throw new TranslogError('bad-proof', `leaf index ${index} is not below tree size ${size}`);
  checkHash(leaf, 'the leaf hash');
  for (const [i, p] of proof.entries()) checkHash(p, `proof element ${i}`);
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) throw new TranslogError('bad-proof', 'the inclusion proof is longer than the tree is high');
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn /= 2;
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new TranslogError('bad-proof', 'the inclusion proof is too short for the tree size');
  return r;
}

/** Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`. */
export async function verifyInclusion(
  index: number,
  size: number,
  leaf: Uint8Array,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): Promise<void> {
  checkHash(root, 'the root');
  const r = await rootFromInclusionProof(index, size, leaf, proof);
  if (!equalBytes(r, root)) {
    throw new TranslogError(
      'bad-inclusion-proof',
      `the inclusion proof of leaf ${index} leads to root ${toHex(r)}, not ${toHex(root)}`,
    );
  }
}

/**
 * Checks that the tree of size2 with root2 extends the tree of size1 with root1 (RFC 9162 §2.1.4.2).
 * Equal sizes need equal roots and an empty proof; a proof from the empty tree is refused as
 * meaningless (every tree extends it), as transparency-dev/merkle does.
 */
export async function verifyConsistency(
  size1: number,
  size2: number,
  root1: Uint8Array,
  root2: Uint8Array,
  proof: readonly Uint8Array[],
): Promise<void> {
  if (!isSize(size1) || !isSize(size2)) throw new TranslogError('bad-proof', 'sizes must be integers');
  checkHash(root1, 'the first root');
  checkHash(root2, 'the second root');
  for (const [i, p] of proof.entries()) checkHash(p, `proof element ${i}`);
  if (size2 < size1) throw new TranslogError('bad-proof', `size ${size2} is smaller than size ${size1}`);
  if (size1 === 0)
    throw new TranslogError('bad-proof', 'a consistency proof from the empty tree is meaningless');
  if (size1 === size2) {
    if (proof.length > 0) throw new TranslogError('bad-proof', 'equal sizes need an empty consistency proof');
    if (!equalBytes(root1, root2)) {
      throw new TranslogError('bad-consistency-proof', `two different roots for the same size ${size1}`);
    }
    return;
  }
  if (proof.length === 0) throw new TranslogError('bad-proof', 'the consistency proof is empty');
  const path = isPowerOfTwo(size1) ? [root1, ...proof] : [...proof];
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (fn % 2 === 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0) throw new TranslogError('bad-proof', 'the consistency proof is too long');
    if (fn % 2 === 1 || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn /= 2;
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new TranslogError('bad-proof', 'the consistency proof is too short');
  if (!equalBytes(fr, root1) || !equalBytes(sr, root2)) {
    throw new TranslogError(
      'bad-consistency-proof',
      `the consistency proof from size ${size1} to ${size2} does not join the two roots` +
        (equalBytes(fr, root1) ? '' : ` (it rebuilds ${toHex(fr)} for size ${size1}, not ${toHex(root1)})`),
    );
  }
}
