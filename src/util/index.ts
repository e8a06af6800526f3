/** The basement's front door (web-standard): bytes, byte readers, JSON canonicalization. */
export {
  bs,
  concatBytes,
  equalBytes,
  fromBase64,
  fromHex,
  isAllZero,
  sha256,
  sha384,
  toBase64,
  toBase64Url,
  toHex,
  utf8,
} from './bytes.js';
export type { JsonValue } from './jcs.js';
export { canonicalize, canonicalizeBytes } from './jcs.js';
export { isObject } from './object.js';
export { Rng } from './prng.js';
export { ByteReader, ParseError } from './reader.js';
