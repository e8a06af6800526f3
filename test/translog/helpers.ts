import { leafHash, nodeHash } from '../../src/translog/hash.js';
import { utf8 } from '../../src/util/bytes.js';

/** MTH of RFC 9162 §2.1.1, written straight from its definition: the oracle for the fast code. */
export async function referenceRoot(leaves: readonly Uint8Array[]): Promise<Uint8Array> {
  if (leaves.length === 0) return new Uint8Array(await crypto.subtle.digest('SHA-256', new Uint8Array(0)));
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(await referenceRoot(leaves.slice(0, k)), await referenceRoot(leaves.slice(k)));
}

export function leavesOf(n: number, tag = 'leaf'): Promise<Uint8Array[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => leafHash(utf8.encode(`${tag} ${i}`))));
}

export function flipBit(b: Uint8Array, bit: number): Uint8Array {
  const c = b.slice();
  c[Math.floor(bit / 8) % c.length]! ^= 1 << (bit % 8);
  return c;
}
