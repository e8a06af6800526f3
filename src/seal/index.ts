/**
 * Cloister's sealed format (`cloister/seal`), web-standard (Web Crypto, WHATWG streams) so it runs in
 * browsers too: seal and open buffers and streams, random access over any `RangeSource`, a parsed
 * sealed file (`openSealed`: header once, key unwrapped once), keys and their JWK files. The format is
 * docs/format.md. Node additions (files, pipes, worker threads, `openSealedPath`, `unsealToMemory`)
 * stay in node.ts, outside this entry point, so a browser bundle never pulls them in.
 */
export { ChunkAuthError, type ChunkCipher } from './aead.js';
export {
  type BodyContext,
  beginSeal,
  bytesSource,
  DEFAULT_CHUNK_SIZE,
  openBodyStream,
  openBytes,
  openReader,
  openSealed,
  openStream,
  type RangeSource,
  type SealedFile,
  type SealedReader,
  type SealOptions,
  type StreamTuning,
  sealBytes,
  sealParts,
  sealStream,
  type UnwrappedSealedFile,
} from './container.js';
export {
  type Header,
  headerLengthOf,
  MAX_CHUNK_SIZE,
  MIN_CHUNK_SIZE,
  parseHeader,
  type RecipientStanza,
  SealFormatError,
  sealedLength,
} from './format.js';
export {
  checkKbsUri,
  generateHpkeKeyPair,
  generateKek,
  type HpkePrivateKey,
  type HpkePublicKey,
  hpkeKeyId,
  hpkePrivateToJwk,
  hpkePublicToJwk,
  type Jwk,
  type KekKey,
  kekToJwk,
  keyFromJwk,
  type Recipient,
  type UnsealKey,
} from './keys.js';
