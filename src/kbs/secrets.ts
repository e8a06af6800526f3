/**
 * Resource values at rest are encrypted under a master key (envelope encryption): AES-256-GCM with a
 * random nonce and the resource path as associated data, so a ciphertext copied onto another resource's
 * row does not decrypt. Several master keys can be configured during a rotation: the first encrypts,
 * all decrypt; `rotate` re-encrypts every value under the first.
 */
import { bs, concatBytes, fromBase64, sha256, toHex, utf8 } from '../util/index.js';
import type { SealedSecret } from './store/types.js';

export interface MasterKey {
  id: string;
  key: CryptoKey;
  /**
   * The same 32 bytes as an HKDF key, from which keys for other purposes are derived (`derive`), so
   * the AES key itself never serves two purposes.
   */
  hkdf: CryptoKey;
}

const AAD_PREFIX = 'cloister-kbs-secret-v1\0';

export async function importMasterKey(raw: Uint8Array): Promise<MasterKey> {
  if (raw.length !== 32) throw new Error(`a master key must be 32 bytes (got ${raw.length})`);
  const id = toHex((await sha256(raw)).subarray(0, 8));
  const key = await crypto.subtle.importKey('raw', bs(raw), 'AES-GCM', false, ['encrypt', 'decrypt']);
  const hkdf = await crypto.subtle.importKey('raw', bs(raw), 'HKDF', false, ['deriveKey']);
  return { id, key, hkdf };
}

/** Master keys are given as base64 (32 bytes), in a file or an environment variable. */
export async function masterKeyFromText(text: string, where: string): Promise<MasterKey> {
  let raw: Uint8Array;
  try {
    raw = fromBase64(text.trim());
  } catch {
    throw new Error(`${where}: the master key must be 32 bytes in base64`);
  }
  if (raw.length !== 32)
    throw new Error(`${where}: the master key must be 32 bytes in base64 (got ${raw.length})`);
  return importMasterKey(raw);
}

export class SecretBox {
  private readonly derived = new Map<string, Promise<CryptoKey>>();

  constructor(private readonly keys: MasterKey[]) {
    if (keys.length === 0) throw new Error('at least one master key is required');
  }

  /**
   * HMAC-SHA-256 of `message` under a key derived from the current master key for one purpose:
   * HKDF-SHA-256 (RFC 5869, no salt) with `label` as its info. The same label and message give the
   * same 32 bytes on every replica and after every restart that has the same current master key
   * (a rotation, which puts another key first, changes them); another label gives unrelated bytes.
   */
  async derive(label: string, message: Uint8Array): Promise<Uint8Array> {
    let k = this.derived.get(label);
    if (!k) {
      k = crypto.subtle.deriveKey(
        { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: bs(utf8.encode(label)) },
        this.keys[0]!.hkdf,
        { name: 'HMAC', hash: 'SHA-256', length: 256 },
        false,
        ['sign'],
      );
      this.derived.set(label, k);
    }
    return new Uint8Array(await crypto.subtle.sign('HMAC', await k, bs(message)));
  }

  get currentKeyId(): string {
    return this.keys[0]!.id;
  }

  async seal(path: string, value: Uint8Array): Promise<SealedSecret> {
    const k = this.keys[0]!;
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = await crypto.subtle.encrypt(
      { name: 'AES-GCM', iv, additionalData: bs(utf8.encode(AAD_PREFIX + path)) },
      k.key,
      bs(value),
    );
    return { masterKeyId: k.id, ciphertext: concatBytes(iv, new Uint8Array(ct)) };
  }

  async open(path: string, s: SealedSecret): Promise<Uint8Array> {
    const k = this.keys.find((m) => m.id === s.masterKeyId);
    if (!k)
      throw new Error(
        `resource ${path} is encrypted under master key ${s.masterKeyId}, which is not configured`,
      );
    const pt = await crypto.subtle.decrypt(
      {
        name: 'AES-GCM',
        iv: bs(s.ciphertext.subarray(0, 12)),
        additionalData: bs(utf8.encode(AAD_PREFIX + path)),
      },
      k.key,
      bs(s.ciphertext.subarray(12)),
    );
    return new Uint8Array(pt);
  }
}
