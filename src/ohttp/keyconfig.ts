/**
 * Oblivious HTTP key configurations (RFC 9458 §3): one X25519 key with the symmetric suites the gateway
 * accepts, and the `application/ohttp-keys` list (each config prefixed by a 2-byte length).
 */
import { concatBytes } from '../util/index.js';
import { OhttpError } from './errors.js';
import { VarReader } from './varint.js';

export const KEM_X25519_HKDF_SHA256 = 0x0020;
export const KDF_HKDF_SHA256 = 0x0001;
export const AEAD_AES_128_GCM = 0x0001;
export const AEAD_AES_256_GCM = 0x0002;
/** PKCS #8 wrapping of a raw X25519 private key (RFC 8410): the DER up to the 32 key bytes. */
// biome-ignore format: the DER reads best on one line
export const PKCS8_X25519_PREFIX = Uint8Array.of(0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20);

/** Lengths of the AEADs this library implements (RFC 9180 §7.3): key and nonce. */
export const AEADS: ReadonlyMap<number, { nk: number; nn: number }> = new Map([
  [AEAD_AES_128_GCM, { nk: 16, nn: 12 }],
  [AEAD_AES_256_GCM, { nk: 32, nn: 12 }],
]);

const X25519_NPK = 32;

export interface SymmetricSuite {
  kdfId: number;
  aeadId: number;
}

export interface KeyConfig {
  keyId: number;
  kemId: number;
  publicKey: Uint8Array;
  /** As offered; may include suites this library does not implement (ChaCha20-Poly1305, say). */
  suites: SymmetricSuite[];
}

function u16(n: number): Uint8Array {
  return Uint8Array.of(n >> 8, n & 0xff);
}

export function encodeKeyConfig(c: KeyConfig): Uint8Array {
  if (!Number.isInteger(c.keyId) || c.keyId < 0 || c.keyId > 255) {
    throw new OhttpError('bad-key-config', `key id ${c.keyId} does not fit one byte`);
  }
  if (c.kemId !== KEM_X25519_HKDF_SHA256) {
    throw new OhttpError(
      'unsupported-kem',
      `KEM 0x${c.kemId.toString(16)} is not supported (only X25519 0x0020)`,
    );
  }
  if (c.publicKey.length !== X25519_NPK) {
    throw new OhttpError('bad-key-config', 'an X25519 public key is 32 bytes');
  }
  if (c.suites.length === 0) throw new OhttpError('bad-key-config', 'a key config needs at least one suite');
  const suites = concatBytes(...c.suites.map((s) => concatBytes(u16(s.kdfId), u16(s.aeadId))));
  return concatBytes(Uint8Array.of(c.keyId), u16(c.kemId), c.publicKey, u16(suites.length), suites);
}

function readKeyConfig(r: VarReader): KeyConfig {
  const keyId = r.u8('key id');
  const kemId = r.u16('kem id');
  if (kemId !== KEM_X25519_HKDF_SHA256) {
    // Without knowing the KEM we cannot know the public key length, so the rest is unreadable.
    throw new OhttpError(
      'unsupported-kem',
      `KEM 0x${kemId.toString(16)} is not supported (only X25519 0x0020)`,
    );
  }
  const publicKey = r.take(X25519_NPK, 'public key').slice();
  const len = r.u16('symmetric algorithms length');
  if (len === 0 || len % 4 !== 0) {
    throw new OhttpError(
      'bad-key-config',
      `symmetric algorithms length ${len} is not a positive multiple of 4`,
    );
  }
  const s = new VarReader(r.take(len, 'symmetric algorithms'), 'symmetric algorithms');
  const suites: SymmetricSuite[] = [];
  while (!s.atEnd()) suites.push({ kdfId: s.u16('kdf id'), aeadId: s.u16('aead id') });
  return { keyId, kemId, publicKey, suites };
}

function wrap<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof OhttpError && e.code === 'truncated') throw new OhttpError('bad-key-config', e.message);
    throw e;
  }
}

/** One key configuration, exactly (no trailing bytes). */
export function decodeKeyConfig(bytes: Uint8Array): KeyConfig {
  return wrap(() => {
    const r = new VarReader(bytes, 'key config');
    const c = readKeyConfig(r);
    if (!r.atEnd()) throw new OhttpError('trailing-bytes', `${r.remaining} bytes after the key config`);
    return c;
  });
}

/** `application/ohttp-keys`: configs each prefixed by a 2-byte length. */
export function encodeKeyConfigList(configs: KeyConfig[]): Uint8Array {
  return concatBytes(
    ...configs.map((c) => {
      const b = encodeKeyConfig(c);
      return concatBytes(u16(b.length), b);
    }),
  );
}

export function decodeKeyConfigList(bytes: Uint8Array): KeyConfig[] {
  return wrap(() => {
    const r = new VarReader(bytes, 'application/ohttp-keys');
    const out: KeyConfig[] = [];
    while (!r.atEnd()) out.push(decodeKeyConfig(r.take(r.u16('key config length'), 'key config')));
    if (out.length === 0)
      throw new OhttpError('bad-key-config', 'application/ohttp-keys holds no key config');
    return out;
  });
}

/** The first suite of `config` this library implements; the client's choice. */
export function selectSuite(config: KeyConfig): SymmetricSuite {
  const s = config.suites.find((x) => x.kdfId === KDF_HKDF_SHA256 && AEADS.has(x.aeadId));
  if (!s) {
    throw new OhttpError(
      'unsupported-aead',
      `key ${config.keyId} offers no supported suite (HKDF-SHA256 with AES-128-GCM or AES-256-GCM)`,
    );
  }
  return s;
}
