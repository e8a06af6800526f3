/**
 * Per-response receipts (docs/confidential-inference.md, "Receipts"): on request, the server signs a
 * statement binding the exact request it decrypted, the exact response body it sent, the model that
 * answered (with its LoRA adapters) and the attested identity (whose report data names the signing key, the OHTTP keys, the
 * models and the software). A client keeps receipts as proof of what an attested model said, which a
 * third party can check later against the attestation document. Web-standard.
 */
import { CompactSign, compactVerify, type JWK } from 'jose';
import { toHex, utf8 } from '../util/index.js';

export const RESPONSE_RECEIPT_TYPE = 'cloister-inference-receipt/v1';
export const RESPONSE_RECEIPT_TYP = 'cloister-inference-receipt+jws';
/** Request header that asks for a receipt; response header (or trailer, when streamed) carrying it. */
export const RECEIPT_HEADER = 'cloister-receipt';
/** Response header naming the digest of the model that answered. */
export const MODEL_DIGEST_HEADER = 'cloister-model-digest';
/** Response header naming the LoRA adapters applied to that model: `<digest>;scale=<n>`, comma-separated. */
export const MODEL_ADAPTERS_HEADER = 'cloister-model-adapters';

/** The `cloister-model-adapters` value for a model's adapters. */
export function formatAdaptersHeader(adapters: readonly { digest: string; scale: number }[]): string {
  return adapters.map((a) => `${a.digest};scale=${a.scale}`).join(', ');
}

/** Reads a `cloister-model-adapters` value back; null for anything else (the header is the server's own). */
export function parseAdaptersHeader(value: string | null): { digest: string; scale: number }[] | null {
  if (value === null) return null;
  const out: { digest: string; scale: number }[] = [];
  for (const item of value.split(',')) {
    const m = /^\s*(sha256:[0-9a-f]{64});scale=([^\s,]+)\s*$/.exec(item);
    const scale = m ? Number(m[2]) : Number.NaN;
    if (!m || !Number.isFinite(scale)) return null;
    out.push({ digest: m[1]!, scale });
  }
  return out;
}

export interface ResponseReceipt {
  type: typeof RESPONSE_RECEIPT_TYPE;
  /** Unix seconds. */
  iat: number;
  /** `sha256:<hex>` of the Binary HTTP request as the gateway decrypted it. */
  request: string;
  /** `sha256:<hex>` of the response content as sent (the whole SSE stream when streamed). */
  response: string;
  status: number;
  /** `sha256:<hex>` of the sealed model that answered; null for requests no model answered. */
  modelDigest: string | null;
  /** The LoRA adapters applied to that model (sealed digests, scales); absent when none. */
  adapters?: { digest: string; scale: number }[];
  /** Report data (hex) of the attestation whose identity holds the signing key. */
  identity: string;
}

export async function sha256Label(bytes: Uint8Array): Promise<string> {
  return `sha256:${toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes.slice())))}`;
}

export async function signResponseReceipt(body: ResponseReceipt, key: CryptoKey): Promise<string> {
  return new CompactSign(utf8.encode(JSON.stringify(body)))
    .setProtectedHeader({ alg: 'ES256', typ: RESPONSE_RECEIPT_TYP })
    .sign(key);
}

export class ReceiptError extends Error {
  override name = 'ReceiptError';
  constructor(
    readonly code: 'receipt-signature' | 'receipt-mismatch',
    message: string,
  ) {
    super(message);
  }
}

/**
 * Checks a receipt's signature under the attested receipt key and that it covers `expected`. The
 * attestation itself (that `receiptKey` and `identity` are attested) is the caller's to have verified.
 */
export async function verifyResponseReceipt(
  jws: string,
  receiptKey: JWK,
  expected: { request: Uint8Array; response: Uint8Array; identity: string },
): Promise<ResponseReceipt> {
  let payload: Uint8Array;
  try {
    const key = await crypto.subtle.importKey(
      'jwk',
      { kty: receiptKey.kty, crv: receiptKey.crv, x: receiptKey.x, y: receiptKey.y, ext: true } as JsonWebKey,
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['verify'],
    );
    const r = await compactVerify(jws, key, { algorithms: ['ES256'] });
    if (r.protectedHeader.typ !== RESPONSE_RECEIPT_TYP) throw new Error(`typ ${r.protectedHeader.typ}`);
    payload = r.payload;
  } catch (e) {
    throw new ReceiptError(
      'receipt-signature',
      `the response receipt does not verify: ${(e as Error).message}`,
    );
  }
  const body = JSON.parse(utf8.decode(payload)) as ResponseReceipt;
  const want = {
    type: RESPONSE_RECEIPT_TYPE,
    request: await sha256Label(expected.request),
    response: await sha256Label(expected.response),
    identity: expected.identity,
  };
  for (const [k, v] of Object.entries(want)) {
    if (body[k as keyof ResponseReceipt] !== v) {
      throw new ReceiptError('receipt-mismatch', `the response receipt's ${k} does not match this exchange`);
    }
  }
  return body;
}
