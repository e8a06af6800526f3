/**
 * Chunk AEAD backends for the STREAM construction. A backend encrypts or decrypts a run of consecutive
 * chunks in one call, so the per-call cost (JS↔native crossing, key schedule) is paid per batch rather
 * than per chunk.
 *
 * Chunk i of a file uses nonce = prefix (7 bytes) ‖ u32be(i) ‖ last-flag (1 byte), where the flag is 1
 * only on the file's final chunk. Every chunk is ciphertext ‖ 16-byte tag; the AAD is the same for
 * all chunks of a file (the header digest).
 */

export const TAG_BYTES = 16;
export const NONCE_PREFIX_BYTES = 7;
export const KEY_BYTES = 32;

export interface ChunkBatch {
  key: Uint8Array;
  noncePrefix: Uint8Array;
  aad: Uint8Array;
  /** Index of the first chunk in this batch. */
  first: number;
  /** Plaintext bytes per chunk; every chunk but the file's last is exactly this long. */
  chunkSize: number;
  /** Whether the last chunk of this batch is the last chunk of the file. */
  final: boolean;
  /** Plaintext (seal) or ciphertext-with-tags (open). */
  input: Uint8Array;
  /** Optional destination; must be exactly the output length. Lets callers decrypt in place into a big buffer. */
  output?: Uint8Array;
  /** The caller will not touch `input` again, so a backend may take its buffer (transfer it to a worker). */
  disposable?: boolean;
}

/** Thrown when a chunk fails authentication; `index` is the absolute chunk number. */
export class ChunkAuthError extends Error {
  override name = 'ChunkAuthError';
  constructor(readonly index: number) {
    super(`chunk ${index} failed authentication (tampered, reordered, truncated, or wrong key)`);
  }
}

export interface ChunkCipher {
  readonly name: string;
  seal(batch: ChunkBatch): Uint8Array | Promise<Uint8Array>;
  open(batch: ChunkBatch): Uint8Array | Promise<Uint8Array>;
}

/** Number of chunks in a batch of `inputLen` bytes, and the output length. */
export function batchShape(
  inputLen: number,
  chunkSize: number,
  sealing: boolean,
): { count: number; outLen: number } {
  const stride = chunkSize + TAG_BYTES;
  if (sealing) {
    const count = Math.max(1, Math.ceil(inputLen / chunkSize));
    return { count, outLen: inputLen + count * TAG_BYTES };
  }
  const count = Math.max(1, Math.ceil(inputLen / stride));
  const outLen = inputLen - count * TAG_BYTES;
  if (outLen < 0) throw new ChunkAuthError(-1);
  return { count, outLen };
}

export function chunkNonce(prefix: Uint8Array, index: number, last: boolean): Uint8Array {
  // The counter is 32 bits: a larger index would wrap and reuse a nonce.
  if (!Number.isInteger(index) || index < 0 || index > 0xffff_ffff)
    throw new RangeError(`chunk index ${index} outside 0..2^32-1`);
  const n = new Uint8Array(12);
  n.set(prefix, 0);
  new DataView(n.buffer).setUint32(7, index, false);
  n[11] = last ? 1 : 0;
  return n;
}

/** Web Crypto backend: works in browsers and Node; one async call per chunk. */
export const webCryptoCipher: ChunkCipher = {
  name: 'webcrypto',
  async seal(b) {
    return run(b, true);
  },
  async open(b) {
    return run(b, false);
  },
};

const keyCache = new WeakMap<Uint8Array, Promise<CryptoKey>>();

function importKey(raw: Uint8Array): Promise<CryptoKey> {
  let k = keyCache.get(raw);
  if (!k) {
    k = crypto.subtle.importKey('raw', new Uint8Array(raw), 'AES-GCM', false, ['encrypt', 'decrypt']);
    keyCache.set(raw, k);
  }
  return k;
}

async function run(b: ChunkBatch, sealing: boolean): Promise<Uint8Array> {
  const key = await importKey(b.key);
  const { count, outLen } = batchShape(b.input.length, b.chunkSize, sealing);
  const out = b.output ?? new Uint8Array(outLen);
  const inStride = sealing ? b.chunkSize : b.chunkSize + TAG_BYTES;
  const outStride = sealing ? b.chunkSize + TAG_BYTES : b.chunkSize;
  if (!sealing && b.input.length - (count - 1) * inStride < TAG_BYTES)
    throw new ChunkAuthError(b.first + count - 1);
  const aad = new Uint8Array(b.aad);
  for (let i = 0; i < count; i++) {
    const index = b.first + i;
    const iv = chunkNonce(b.noncePrefix, index, b.final && i === count - 1);
    const piece = new Uint8Array(
      b.input.subarray(i * inStride, Math.min((i + 1) * inStride, b.input.length)),
    );
    let res: ArrayBuffer;
    try {
      res = sealing
        ? await crypto.subtle.encrypt(
            { name: 'AES-GCM', iv: iv as Uint8Array<ArrayBuffer>, additionalData: aad },
            key,
            piece,
          )
        : await crypto.subtle.decrypt(
            { name: 'AES-GCM', iv: iv as Uint8Array<ArrayBuffer>, additionalData: aad },
            key,
            piece,
          );
    } catch {
      throw new ChunkAuthError(index);
    }
    out.set(new Uint8Array(res), i * outStride);
  }
  return out;
}
