/**
 * RFC 6962 / RFC 9162 §2.1.1 hashing with SHA-256: leaves and interior nodes get different one-byte
 * prefixes so that a leaf can never be passed off as a node (second-preimage resistance of the tree).
 */
import { bs } from '../util/index.js';

export const HASH_SIZE = 32;

const LEAF_PREFIX = 0x00;
const NODE_PREFIX = 0x01;

async function digest(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bs(data)));
}

/** SHA-256(0x00 ‖ data): the hash of a leaf. */
export function leafHash(data: Uint8Array): Promise<Uint8Array> {
  const buf = new Uint8Array(1 + data.length);
  buf[0] = LEAF_PREFIX;
  buf.set(data, 1);
  return digest(buf);
}

/** SHA-256(0x01 ‖ left ‖ right): the hash of an interior node. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Promise<Uint8Array> {
  const buf = new Uint8Array(1 + 2 * HASH_SIZE);
  buf[0] = NODE_PREFIX;
  buf.set(left, 1);
  buf.set(right, 1 + HASH_SIZE);
  return digest(buf);
}

/** MTH({}) = SHA-256() (RFC 9162 §2.1.1). */
export function emptyRoot(): Promise<Uint8Array> {
  return digest(new Uint8Array(0));
}
