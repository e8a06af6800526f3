/**
 * The keys a server answers with: its OHTTP gateway key (clients encrypt to it) and its receipt
 * signing key. By default each server makes its own inside the TEE. Replicas behind a load balancer
 * share one set instead, released by the key broker to each replica after it attests: then every
 * replica has the same attested identity, and a client that verified one can be served by any.
 *
 * The shared form is a JSON document (a broker resource, or a file in development):
 *
 *   { "type": "cloister-serving-keys/v1",
 *     "ohttp": { "key_id": 0–255, "private_key": b64url (32-byte X25519 scalar) },
 *     "receipt": { "kty": "EC", "crv": "P-256", "x", "y", "d" },
 *     "models": [{ "id", "digest": "sha256:<sealed file>",
 *                  "adapters"?: [{ "digest": "sha256:<sealed adapter>", "scale" }] }, …],
 *     "plaintext_allowed": false }
 *
 * `models` and `plaintext_allowed` say what the keys may serve: a server refuses to start with keys
 * made for other models (LoRA adapters and their scales included) or another plaintext setting, so a replica cannot answer a client that
 * verified another replica with a different model. The attested identity names the keys' source, and
 * clients accept shared keys only from sources their policy lists.
 */
import type { JWK } from 'jose';
import {
  GATEWAY_SUITES,
  type GatewayKey,
  generateGatewayKey,
  KEM_X25519_HKDF_SHA256,
  PKCS8_X25519_PREFIX,
} from '../ohttp/index.js';
import { bs, concatBytes, fromBase64, isObject, toBase64Url, utf8 } from '../util/index.js';
import { type AdapterIdentity, generateSigningKey } from '../wire/index.js';

export const SERVING_KEYS_TYPE = 'cloister-serving-keys/v1';

export interface ServingKeys {
  gateway: GatewayKey;
  receipt: { publicJwk: JWK; privateKey: CryptoKey };
}

/** What shared keys are for: the models (in order, with their adapters) and the plaintext setting of every replica. */
export interface ServingScope {
  models: ScopedModel[];
  plaintextAllowed: boolean;
}

export interface ScopedModel {
  id: string;
  digest: string;
  /** The LoRA adapters every replica applies to it; absent or empty: none. */
  adapters?: AdapterIdentity[];
}

/** Keys read from a shared document: where they came from and what they may serve. */
export interface SharedServingKeys extends ServingKeys, ServingScope {
  /** `kbs:///…` or `file:…`; goes into the attested identity. */
  source: string;
}

export class ServingKeysError extends Error {
  override name = 'ServingKeysError';
}

const bad = (message: string): never => {
  throw new ServingKeysError(`serving keys: ${message}`);
};

/** A fresh random set; `exportable` when it is to be written out (cloister keygen --serving). */
export async function generateServingKeys(
  o: { keyId?: number; exportable?: boolean } = {},
): Promise<ServingKeys> {
  const keyId = o.keyId ?? crypto.getRandomValues(new Uint8Array(1))[0]!;
  return { gateway: await generateGatewayKey(keyId), receipt: await generateSigningKey(o.exportable) };
}

/** The shared document, for a set made with `exportable`. */
export async function encodeServingKeys(keys: ServingKeys, scope: ServingScope): Promise<Uint8Array> {
  if (scope.models.length === 0) bad('name at least one model the keys may serve');
  const receipt = await crypto.subtle.exportKey('jwk', keys.receipt.privateKey);
  const doc = {
    type: SERVING_KEYS_TYPE,
    ohttp: { key_id: keys.gateway.config.keyId, private_key: toBase64Url(keys.gateway.privateKey) },
    receipt: { kty: 'EC', crv: 'P-256', x: receipt.x, y: receipt.y, d: receipt.d },
    models: scope.models.map(({ id, digest, adapters }) => ({
      id,
      digest,
      ...(adapters?.length ? { adapters: adapters.map((a) => ({ digest: a.digest, scale: a.scale })) } : {}),
    })),
    plaintext_allowed: scope.plaintextAllowed,
  };
  return utf8.encode(`${JSON.stringify(doc, null, 2)}\n`);
}

function b64(v: unknown, what: string, bytes: number): Uint8Array {
  if (typeof v !== 'string' || !/^[A-Za-z0-9_-]+$/.test(v)) bad(`${what} must be base64url`);
  const out = fromBase64(v as string);
  if (out.length !== bytes) bad(`${what} must be ${bytes} bytes, got ${out.length}`);
  return out;
}

/** Reads the shared document from `source`; the private keys are imported non-extractable. */
export async function decodeServingKeys(bytes: Uint8Array, source: string): Promise<SharedServingKeys> {
  let doc: unknown;
  try {
    doc = JSON.parse(utf8.decode(bytes));
  } catch {
    bad('not JSON');
  }
  if (!isObject(doc) || doc.type !== SERVING_KEYS_TYPE) bad(`not a ${SERVING_KEYS_TYPE} document`);
  const { ohttp, receipt, models, plaintext_allowed } = doc as Record<string, unknown>;
  if (!Array.isArray(models) || models.length === 0) bad('"models" must list the models the keys may serve');
  const scoped = (models as unknown[]).map((m, i) => {
    const r = isObject(m) ? m : {};
    if (typeof r.id !== 'string' || typeof r.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(r.digest))
      return bad(`models[${i}] must be {"id", "digest": "sha256:<64 hex>"}`);
    if (r.adapters === undefined) return { id: r.id, digest: r.digest };
    if (!Array.isArray(r.adapters)) return bad(`models[${i}].adapters must be a list`);
    const adapters = (r.adapters as unknown[]).map((a, j) => {
      const x = isObject(a) ? a : {};
      if (
        typeof x.digest !== 'string' ||
        !/^sha256:[0-9a-f]{64}$/.test(x.digest) ||
        typeof x.scale !== 'number' ||
        !(x.scale > 0) ||
        !Number.isFinite(x.scale)
      )
        return bad(
          `models[${i}].adapters[${j}] must be {"digest": "sha256:<64 hex>", "scale": a number > 0}`,
        );
      return { digest: x.digest, scale: x.scale };
    });
    return { id: r.id, digest: r.digest, ...(adapters.length > 0 ? { adapters } : {}) };
  });
  if (typeof plaintext_allowed !== 'boolean') bad('"plaintext_allowed" must be true or false');
  if (!isObject(ohttp)) bad('"ohttp" must be an object');
  const o = ohttp as Record<string, unknown>;
  const keyId = o.key_id;
  if (typeof keyId !== 'number' || !Number.isInteger(keyId) || keyId < 0 || keyId > 255)
    bad('ohttp.key_id must be an integer 0–255');
  const scalar = b64(o.private_key, 'ohttp.private_key', 32);
  // The public key is derived, not read: a document cannot pair a key with another's public half.
  const pkcs8 = bs(concatBytes(PKCS8_X25519_PREFIX, scalar));
  let x: string;
  try {
    const k = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'X25519' }, true, ['deriveBits']);
    x = (await crypto.subtle.exportKey('jwk', k)).x!;
  } catch (e) {
    return bad(`ohttp.private_key is not an X25519 key: ${(e as Error).message}`);
  }
  const gateway: GatewayKey = {
    config: {
      keyId: keyId as number,
      kemId: KEM_X25519_HKDF_SHA256,
      publicKey: fromBase64(x),
      suites: [...GATEWAY_SUITES],
    },
    privateKey: scalar,
  };
  if (!isObject(receipt)) bad('"receipt" must be an EC P-256 private JWK');
  const r = receipt as Record<string, unknown>;
  if (r.kty !== 'EC' || r.crv !== 'P-256') bad('receipt must be an EC P-256 private JWK');
  b64(r.x, 'receipt.x', 32);
  b64(r.y, 'receipt.y', 32);
  b64(r.d, 'receipt.d', 32);
  const publicJwk: JWK = { kty: 'EC', crv: 'P-256', x: r.x as string, y: r.y as string };
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  let privateKey: CryptoKey;
  let matches: boolean;
  try {
    privateKey = await crypto.subtle.importKey('jwk', { ...publicJwk, d: r.d as string }, alg, false, [
      'sign',
    ]);
    // Receipts are checked against x and y: a d that is not theirs would sign receipts nobody accepts.
    const publicKey = await crypto.subtle.importKey('jwk', publicJwk, alg, false, ['verify']);
    const probe = bs(utf8.encode(SERVING_KEYS_TYPE));
    matches = await crypto.subtle.verify(
      alg,
      publicKey,
      await crypto.subtle.sign(alg, privateKey, probe),
      probe,
    );
  } catch (e) {
    return bad(`receipt is not a usable P-256 key: ${(e as Error).message}`);
  }
  if (!matches) bad('receipt.d is not the private key of receipt.x/receipt.y');
  return {
    gateway,
    receipt: { publicJwk, privateKey: privateKey! },
    models: scoped,
    plaintextAllowed: plaintext_allowed as boolean,
    source,
  };
}

/** Refuses to serve with shared keys made for other models (ids, digests, order) or plaintext setting. */
export function checkServedModels(
  keys: SharedServingKeys,
  served: readonly ScopedModel[],
  plaintextAllowed: boolean,
): void {
  const list = (ms: readonly ScopedModel[]) =>
    ms
      .map(
        (m) =>
          `${m.id} ${m.digest}${(m.adapters ?? []).map((a) => ` + adapter ${a.digest} scale ${a.scale}`).join('')}`,
      )
      .join(', ');
  if (list(served) !== list(keys.models))
    bad(`the keys from ${keys.source} are for ${list(keys.models)}; this server loaded ${list(served)}`);
  if (plaintextAllowed !== keys.plaintextAllowed)
    bad(
      `the keys from ${keys.source} are for servers ${keys.plaintextAllowed ? 'with' : 'without'} --allow-plaintext`,
    );
}
