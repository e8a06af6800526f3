/**
 * C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures, and verifier keys ("vkeys") in the
 * form of Go's golang.org/x/mod/sumdb/note: `<name>+<key id hex>+<base64(0x01 ‖ public key)>`.
 *
 *   <text, ending in a newline>
 *   <blank line>
 *   — <key name> <base64(key id ‖ signature)>
 */
import { bs, concatBytes, fromBase64, toBase64, toHex, utf8 } from '../util/index.js';
import { TranslogError } from './errors.js';

const ED25519 = 0x01;
const ALG = { name: 'Ed25519' } as const;
const SIG_PREFIX = '\u2014 ';
/** More than the 16 the spec asks verifiers to accept; bounds the work an attacker can make us do. */
const MAX_SIGNATURES = 64;

export interface NoteSignature {
  name: string;
  /** uint32 key id, big-endian in the signature bytes. */
  keyId: number;
  signature: Uint8Array;
}

export interface Note {
  /** The signed text, with its final newline. */
  text: string;
  signatures: NoteSignature[];
}

export interface NoteVerifier {
  name: string;
  keyId: number;
  /** 32-byte Ed25519 public key. */
  publicKey: Uint8Array;
  verify(message: Uint8Array, signature: Uint8Array): Promise<boolean>;
}

export interface NoteSigner {
  name: string;
  keyId: number;
  publicKey: Uint8Array;
  sign(message: Uint8Array): Promise<Uint8Array>;
}

/** Standard base64 with padding, as the spec uses. */
export { toBase64 };

function strictBase64(s: string, what: string, code: 'bad-note' | 'bad-key' | 'bad-checkpoint'): Uint8Array {
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) {
    throw new TranslogError(code, `${what} is not standard base64`);
  }
  return fromBase64(s);
}

/** Whether `s` has a character below U+0020 (other than newline when `newlineOk`). */
function hasControl(s: string, newlineOk = false): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 && !(newlineOk && c === 0x0a)) return true;
  }
  return false;
}

export function checkKeyName(name: string): void {
  if (name.length === 0 || /[\s+]/u.test(name) || hasControl(name)) {
    throw new TranslogError('bad-key', `key name ${JSON.stringify(name)} is empty or has a space or '+'`);
  }
}

/** SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4] as a uint32 (c2sp.org/signed-note, Ed25519). */
export async function ed25519KeyId(name: string, publicKey: Uint8Array): Promise<number> {
  const h = new Uint8Array(
    await crypto.subtle.digest(
      'SHA-256',
      bs(concatBytes(utf8.encode(name), Uint8Array.of(0x0a, ED25519), publicKey)),
    ),
  );
  return new DataView(h.buffer).getUint32(0);
}

function keyIdHex(id: number): string {
  return id.toString(16).padStart(8, '0');
}

export function formatVerifierKey(name: string, keyId: number, publicKey: Uint8Array): string {
  return `${name}+${keyIdHex(keyId)}+${toBase64(concatBytes(Uint8Array.of(ED25519), publicKey))}`;
}

/** Reads a vkey, checking that its key id is the one its name and public key give. */
export async function parseVerifierKey(vkey: string): Promise<NoteVerifier> {
  const parts = vkey.trim().split('+');
  // The base64 part may itself contain '+': rejoin everything after the key id.
  if (parts.length < 3)
    throw new TranslogError('bad-key', 'a verifier key is <name>+<key id hex>+<base64 key>');
  const [name, idHex] = parts as [string, string];
  const b64 = parts.slice(2).join('+');
  checkKeyName(name);
  if (!/^[0-9a-f]{8}$/.test(idHex))
    throw new TranslogError('bad-key', 'the key id of a vkey is 8 hex digits');
  const material = strictBase64(b64, 'the vkey public key', 'bad-key');
  if (material[0] !== ED25519) {
    throw new TranslogError(
      'bad-key',
      `vkey signature type 0x${toHex(material.subarray(0, 1))} is not Ed25519 (0x01)`,
    );
  }
  const publicKey = material.slice(1);
  if (publicKey.length !== 32) throw new TranslogError('bad-key', 'an Ed25519 public key has 32 bytes');
  const keyId = Number.parseInt(idHex, 16);
  if ((await ed25519KeyId(name, publicKey)) !== keyId) {
    throw new TranslogError('bad-key', `the vkey's key id ${idHex} does not match its name and public key`);
  }
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey('raw', bs(publicKey), ALG, true, ['verify']);
  } catch (e) {
    throw new TranslogError('bad-key', `not an Ed25519 public key: ${(e as Error).message}`);
  }
  return {
    name,
    keyId,
    publicKey,
    verify: (message, signature) => crypto.subtle.verify(ALG, key, bs(signature), bs(message)),
  };
}

async function signerFromKeys(
  name: string,
  privateKey: CryptoKey,
  publicKey: Uint8Array,
): Promise<NoteSigner> {
  checkKeyName(name);
  const keyId = await ed25519KeyId(name, publicKey);
  return {
    name,
    keyId,
    publicKey,
    sign: async (message) => new Uint8Array(await crypto.subtle.sign(ALG, privateKey, bs(message))),
  };
}

export interface GeneratedSigner {
  signer: NoteSigner;
  /** The private key as an OKP JWK with `kid` = key name: what a key file holds. */
  jwk: JsonWebKey & { kid: string };
  vkey: string;
}

/** A fresh Ed25519 note signer named `name` (a schema-less URL such as broker.example/log is best). */
export async function generateNoteSigner(name: string): Promise<GeneratedSigner> {
  checkKeyName(name);
  const pair = (await crypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const jwk = { ...(await crypto.subtle.exportKey('jwk', pair.privateKey)), kid: name };
  const signer = await signerFromKeys(name, pair.privateKey, publicKey);
  return { signer, jwk, vkey: formatVerifierKey(name, signer.keyId, publicKey) };
}

/** A signer from an Ed25519 private JWK; the name is `name` or else the JWK's `kid`. */
export async function signerFromJwk(jwk: JsonWebKey & { kid?: string }, name?: string): Promise<NoteSigner> {
  const keyName = name ?? jwk.kid;
  if (!keyName)
    throw new TranslogError('bad-key', 'the signer key has no name (give one, or set the JWK kid)');
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string' || typeof jwk.x !== 'string') {
    throw new TranslogError(
      'bad-key',
      'a note signer key is an Ed25519 private JWK (kty OKP, crv Ed25519, d, x)',
    );
  }
  let privateKey: CryptoKey;
  try {
    const { kid: _kid, ...bare } = jwk;
    privateKey = await crypto.subtle.importKey('jwk', bare, ALG, false, ['sign']);
  } catch (e) {
    throw new TranslogError('bad-key', `not a usable Ed25519 private key: ${(e as Error).message}`);
  }
  return signerFromKeys(keyName, privateKey, fromBase64(jwk.x));
}

export function vkeyOf(signer: NoteSigner): string {
  return formatVerifierKey(signer.name, signer.keyId, signer.publicKey);
}

function checkNoteText(text: string, what: string): void {
  if (hasControl(text, true)) {
    throw new TranslogError('bad-note', `${what} contains an ASCII control character other than newline`);
  }
  if (/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text)) {
    throw new TranslogError('bad-note', `${what} is not valid UTF-8 (lone surrogate)`);
  }
}

/** Signs `text` (which must end in a newline) with each signer; returns the whole note. */
export async function signNote(text: string, signers: readonly NoteSigner[]): Promise<string> {
  checkNoteText(text, 'the note text');
  if (!text.endsWith('\n')) throw new TranslogError('bad-note', 'the note text must end with a newline');
  if (signers.length === 0) throw new TranslogError('bad-note', 'a note needs at least one signature');
  const message = utf8.encode(text);
  let out = `${text}\n`;
  for (const s of signers) {
    const id = new Uint8Array(4);
    new DataView(id.buffer).setUint32(0, s.keyId);
    out += `${SIG_PREFIX}${s.name} ${toBase64(concatBytes(id, await s.sign(message)))}\n`;
  }
  return out;
}

/** Splits a note into text and signature lines, checking the syntax only (nothing is trusted yet). */
export function parseNote(note: string | Uint8Array): Note {
  let s: string;
  try {
    s = typeof note === 'string' ? note : utf8.decode(note);
  } catch {
    throw new TranslogError('bad-note', 'the note is not valid UTF-8');
  }
  checkNoteText(s, 'the note');
  if (!s.endsWith('\n')) throw new TranslogError('bad-note', 'a note ends with a newline');
  const split = s.lastIndexOf('\n\n');
  if (split < 0) throw new TranslogError('bad-note', 'a note has no blank line before its signatures');
  const text = s.slice(0, split + 1);
  const lines = s.slice(split + 2, -1).split('\n');
  if (lines.length > MAX_SIGNATURES)
    throw new TranslogError('bad-note', `more than ${MAX_SIGNATURES} signatures`);
  const signatures = lines.map((line, i): NoteSignature => {
    const m = /^\u2014 (\S+) (\S+)$/u.exec(line);
    if (!m) throw new TranslogError('bad-note', `signature line ${i + 1} is not "— <name> <base64>"`);
    const [, name, b64] = m as unknown as [string, string, string];
    if (name.includes('+'))
      throw new TranslogError('bad-note', `signature line ${i + 1} has a '+' in its key name`);
    const raw = strictBase64(b64, `signature line ${i + 1}`, 'bad-note');
    if (raw.length < 5) throw new TranslogError('bad-note', `signature line ${i + 1} is too short`);
    return { name, keyId: new DataView(raw.buffer, raw.byteOffset).getUint32(0), signature: raw.slice(4) };
  });
  return { text, signatures };
}

/**
 * Verifies a note against trusted keys: signatures from other keys are ignored; one from a trusted key
 * (same name and key id) that fails makes the whole note fail ('bad-signature'); with no signature from a
 * trusted key the note is refused ('unknown-key'). Returns the text and the names of the keys that signed.
 */
export async function verifyNote(
  note: string | Uint8Array,
  verifiers: readonly NoteVerifier[],
): Promise<{ text: string; signedBy: string[] }> {
  const { text, signatures } = parseNote(note);
  const message = utf8.encode(text);
  const signedBy: string[] = [];
  for (const sig of signatures) {
    const v = verifiers.find((k) => k.name === sig.name && k.keyId === sig.keyId);
    if (!v) continue;
    if (!(await v.verify(message, sig.signature))) {
      throw new TranslogError(
        'bad-signature',
        `the signature of ${sig.name} (${keyIdHex(sig.keyId)}) does not verify`,
      );
    }
    if (!signedBy.includes(v.name)) signedBy.push(v.name);
  }
  if (signedBy.length === 0) {
    const names = signatures.map((s) => `${s.name}+${keyIdHex(s.keyId)}`).join(', ');
    const trusted = verifiers.map((v) => `${v.name}+${keyIdHex(v.keyId)}`).join(', ');
    throw new TranslogError(
      'unknown-key',
      `the note is signed by ${names || 'nobody'}, none of them trusted (${trusted})`,
    );
  }
  return { text, signedBy };
}
