/**
 * Node-only ChunkCipher on the native addon (native/aes_gcm.c, built by `npm ci` through node-gyp):
 * one call per batch, straight into the caller's buffer, with the system libcrypto. When the addon is
 * not built (no compiler, no OpenSSL 3 headers, another platform) everything falls back silently to
 * node:crypto, then Web Crypto.
 */
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { batchShape, ChunkAuthError, type ChunkBatch, type ChunkCipher, webCryptoCipher } from './aead.js';
import { nodeCipher, nodeCipherAvailable } from './aead-node.js';

/** The addon's functions; open/seal return -1, or the batch-relative index of the chunk that failed. */
export interface NativeAesGcm {
  seal(
    key: Uint8Array,
    noncePrefix: Uint8Array,
    aad: Uint8Array,
    first: number,
    chunkSize: number,
    final: boolean,
    input: Uint8Array,
    output: Uint8Array,
  ): number;
  open(
    key: Uint8Array,
    noncePrefix: Uint8Array,
    aad: Uint8Array,
    first: number,
    chunkSize: number,
    final: boolean,
    input: Uint8Array,
    output: Uint8Array,
  ): number;
  opensslVersion(): string;
}

function load(): NativeAesGcm | undefined {
  const path = fileURLToPath(new URL('../../build/Release/cloister_aes.node', import.meta.url));
  const module = { exports: {} as NativeAesGcm };
  // Node exports its own bundled OpenSSL's symbols, and a plain require() would bind the addon to
  // those instead of the system libcrypto it was linked with. RTLD_DEEPBIND (Linux) makes the addon
  // resolve OpenSSL from its own dependencies first; elsewhere the bundled copy is an OpenSSL 3 too.
  const flags = constants.dlopen.RTLD_NOW | (constants.dlopen.RTLD_DEEPBIND ?? 0);
  try {
    process.dlopen(module, path, flags);
    return module.exports;
  } catch {
    return undefined;
  }
}

/** The loaded addon, or undefined when it is not built; exported so tests can probe its own checks. */
export const nativeAesGcm: NativeAesGcm | undefined = load();

function run(addon: NativeAesGcm, b: ChunkBatch, sealing: boolean): Uint8Array {
  let out = b.output;
  if (Number.isInteger(b.chunkSize) && b.chunkSize >= 1) {
    // Throws ChunkAuthError(-1) for a ciphertext too short for its tags, as the other backends do.
    const { outLen } = batchShape(b.input.length, b.chunkSize, sealing);
    out ??= new Uint8Array(outLen);
  }
  // With a nonsensical chunk size the addon rejects the batch itself (RangeError).
  out ??= new Uint8Array(0);
  const fn = sealing ? addon.seal : addon.open;
  const bad = fn(b.key, b.noncePrefix, b.aad, b.first, b.chunkSize, b.final, b.input, out);
  if (bad >= 0) throw new ChunkAuthError(b.first + bad);
  return out;
}

function nativeCipherOf(addon: NativeAesGcm): ChunkCipher {
  return { name: 'native', seal: (b) => run(addon, b, true), open: (b) => run(addon, b, false) };
}

/** The native backend, or undefined when the addon is not built. */
export const nativeCipher: ChunkCipher | undefined = nativeAesGcm && nativeCipherOf(nativeAesGcm);

/** The fastest backend in this process: native addon, then node:crypto, then Web Crypto. */
export function bestChunkCipher(): ChunkCipher {
  if (nativeCipher) return nativeCipher;
  return nodeCipherAvailable() ? nodeCipher : webCryptoCipher;
}

/** What `bestChunkCipher()` picked, for verbose output, e.g. "native (OpenSSL 3.0.19 27 Jan 2026)". */
export function chunkCipherBackend(): string {
  const c = bestChunkCipher();
  return c === nativeCipher && nativeAesGcm ? `native (${nativeAesGcm.opensslVersion()})` : c.name;
}
