/**
 * Node-only ChunkCipher on node:crypto. One createCipheriv/createDecipheriv per chunk: Node has no way
 * to re-key an existing cipher object with a new IV, and no way to encrypt into a caller's buffer, so
 * every chunk costs a cipher lookup plus an allocated, zero-filled and copied output
 * (docs/performance.md, "AES-GCM on this CPU"). It is the fallback when the native addon is not built.
 */
import { createCipheriv, createDecipheriv, getCiphers } from 'node:crypto';
import {
  batchShape,
  ChunkAuthError,
  type ChunkBatch,
  type ChunkCipher,
  chunkNonce,
  KEY_BYTES,
  NONCE_PREFIX_BYTES,
  TAG_BYTES,
} from './aead.js';

const MAX_INDEX = 0xffffffff;

/**
 * Rejects a batch the STREAM layout cannot represent, with the same error classes as the native
 * addon: TypeError for a wrong buffer length, RangeError for a number out of range.
 */
function checkBatch(b: ChunkBatch, sealing: boolean): { count: number; outLen: number } {
  if (b.key.length !== KEY_BYTES) throw new TypeError(`key must be ${KEY_BYTES} bytes`);
  if (b.noncePrefix.length !== NONCE_PREFIX_BYTES) {
    throw new TypeError(`noncePrefix must be ${NONCE_PREFIX_BYTES} bytes`);
  }
  if (!Number.isInteger(b.chunkSize) || b.chunkSize < 1 || b.chunkSize > 2 ** 30) {
    throw new RangeError('chunkSize must be an integer in [1, 2^30]');
  }
  const { count, outLen } = batchShape(b.input.length, b.chunkSize, sealing);
  // The index is a 32-bit nonce field; wrapping would reuse a nonce under the same key.
  if (!Number.isInteger(b.first) || b.first < 0 || b.first + count - 1 > MAX_INDEX) {
    throw new RangeError('chunk index would exceed 2^32-1');
  }
  if (b.output && b.output.length !== outLen) throw new TypeError('output length does not match the batch');
  return { count, outLen };
}

function run(b: ChunkBatch, sealing: boolean): Uint8Array {
  const { count, outLen } = checkBatch(b, sealing);
  const inStride = sealing ? b.chunkSize : b.chunkSize + TAG_BYTES;
  const outStride = sealing ? b.chunkSize + TAG_BYTES : b.chunkSize;
  // Only the last piece can be shorter than a tag; then the output layout is meaningless, so fail
  // before decrypting anything.
  if (!sealing && b.input.length - (count - 1) * inStride < TAG_BYTES) {
    b.output?.fill(0);
    throw new ChunkAuthError(b.first + count - 1);
  }
  const out = b.output ?? new Uint8Array(outLen);
  for (let i = 0; i < count; i++) {
    const index = b.first + i;
    const iv = chunkNonce(b.noncePrefix, index, b.final && i === count - 1);
    const piece = b.input.subarray(i * inStride, Math.min((i + 1) * inStride, b.input.length));
    const at = i * outStride;
    if (sealing) {
      const c = createCipheriv('aes-256-gcm', b.key, iv, { authTagLength: TAG_BYTES });
      c.setAAD(b.aad);
      out.set(c.update(piece), at);
      c.final();
      out.set(c.getAuthTag(), at + piece.length);
      continue;
    }
    const text = piece.length - TAG_BYTES;
    const d = createDecipheriv('aes-256-gcm', b.key, iv, { authTagLength: TAG_BYTES });
    d.setAAD(b.aad);
    d.setAuthTag(piece.subarray(text));
    const plain = d.update(piece.subarray(0, text));
    try {
      d.final();
    } catch {
      // Unauthenticated plaintext must not survive, neither in Node's buffer nor in earlier chunks.
      plain.fill(0);
      out.fill(0);
      throw new ChunkAuthError(index);
    }
    out.set(plain, at);
    plain.fill(0);
  }
  return out;
}

export const nodeCipher: ChunkCipher = {
  name: 'node',
  seal: (b) => run(b, true),
  open: (b) => run(b, false),
};

/** False on a Node built without AES-256-GCM (it has always been there, but a FIPS build decides). */
export function nodeCipherAvailable(): boolean {
  return getCiphers().includes('aes-256-gcm');
}
