/**
 * Run receipts: what `cloister run` did inside the TEE, signed so that anyone can check it later
 * without trusting the machine that stored it (docs/agent.md, "Run receipts"). Web-standard.
 *
 * Design: a fresh ES256 key per run. Before the workload starts, the agent collects TEE evidence whose
 * report data is SHA-512("cloister-run-receipt/v1\n" ‖ JCS(the key's RFC 7638 members)), so the
 * hardware vouches that the private key was made inside this TEE and never left it (it is held only in
 * this process's memory). The receipt is a JWS (flattened JSON serialisation) by that key whose header
 * carries the public key and whose payload carries the evidence, the broker's EAR token for the run
 * and what was run: sealed digests of inputs and outputs, the command line, exit status and times.
 */

import {
  decodeJwt,
  type FlattenedJWS,
  type FlattenedJWSInput,
  FlattenedSign,
  flattenedVerify,
  type JWK,
} from 'jose';
import { type EarResult, earDisagreement, verifyEar } from '../attest/index.js';
import type { Appraisal, CollateralSource, TeeKind, VerifierRegistry } from '../attest/types.js';
import { canonicalizeBytes, concatBytes, fromBase64, toBase64Url, toHex, utf8 } from '../util/index.js';
import { generateSigningKey } from '../wire/index.js';
import type { CpuAttester } from './evidence/types.js';
import { AgentError } from './keys.js';

export const RECEIPT_TYPE = 'cloister-run-receipt/v1';
export const RECEIPT_JWS_TYP = 'cloister-run-receipt+jws';
const BINDING_LABEL = utf8.encode(`${RECEIPT_TYPE}\n`);

export interface ReceiptInput {
  /** The sealed file as named on the command line. */
  file: string;
  /** The plaintext's name inside the private directory. */
  name: string;
  /** The key-broker URI whose KEK opened it. */
  kbs: string;
  sealedSha256: string;
}

export interface ReceiptOutput {
  /** Path of the sealed output, relative to the output directory. */
  file: string;
  sealedSha256: string;
  /** Recipient key ids (kbs:///… URIs, hpke:…). */
  recipients: string[];
}

export interface ReceiptBody {
  type: typeof RECEIPT_TYPE;
  command: string[];
  /** The workload's exit status; null when a signal ended it. */
  exitCode: number | null;
  signal: string | null;
  startedAt: string;
  endedAt: string;
  inputs: ReceiptInput[];
  outputs: ReceiptOutput[];
  tee: { kind: string; insecure: boolean; claims: Record<string, unknown> | null };
  /** The broker's EAR token for this run's attestation; null when no broker was asked for anything. */
  ear: string | null;
  /** Evidence binding the receipt key: base64url, report data in lower-case hex. */
  attestation: { kind: string; evidence: string; auxblob?: string; reportData: string };
}

export interface ReceiptSigner {
  publicJwk: JWK;
  privateKey: CryptoKey;
  /** The evidence binding `publicJwk`, collected when the key was made. */
  attestation: ReceiptBody['attestation'];
}

function thumbprintMembers(jwk: JWK): Record<string, unknown> {
  return { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
}

/** The 64 bytes of report data that bind a receipt key. */
export async function receiptReportData(publicJwk: JWK): Promise<Uint8Array> {
  const msg = concatBytes(BINDING_LABEL, canonicalizeBytes(thumbprintMembers(publicJwk)));
  return new Uint8Array(await crypto.subtle.digest('SHA-512', msg.slice()));
}

/** A fresh receipt key, bound into evidence from `attester`. */
export async function createReceiptSigner(attester: CpuAttester): Promise<ReceiptSigner> {
  const { publicJwk, privateKey } = await generateSigningKey();
  const reportData = await receiptReportData(publicJwk);
  const e = await attester.collect(reportData);
  return {
    publicJwk,
    privateKey,
    attestation: {
      kind: e.kind,
      evidence: toBase64Url(e.evidence),
      ...(e.auxblob && e.auxblob.length > 0 ? { auxblob: toBase64Url(e.auxblob) } : {}),
      reportData: toHex(reportData),
    },
  };
}

export async function signReceipt(body: ReceiptBody, signer: ReceiptSigner): Promise<FlattenedJWS> {
  return new FlattenedSign(utf8.encode(JSON.stringify(body)))
    .setProtectedHeader({ alg: 'ES256', typ: RECEIPT_JWS_TYP, jwk: signer.publicJwk })
    .sign(signer.privateKey);
}

export interface VerifyReceiptOptions {
  registry: VerifierRegistry;
  at: Date;
  collateral: CollateralSource;
  trustAnchors?: Uint8Array[];
  /** The broker's EAR verification key; when given, the EAR token must verify under it. */
  earKey?: CryptoKey | JsonWebKey;
}

export interface VerifiedReceipt {
  body: ReceiptBody;
  /** The appraisal of the evidence that binds the receipt key. */
  appraisal: Appraisal;
  /** The verified EAR, when `earKey` was given and the receipt carries one. */
  ear?: EarResult;
}

/**
 * Checks a receipt: the JWS signature under the key in its header, that key's binding into the
 * evidence's report data, the evidence itself (parse → verify → appraise with the registry), and,
 * with `earKey`, the broker's EAR token. The caller judges the appraisal (status, measurements).
 */
export async function verifyReceipt(
  receipt: FlattenedJWSInput,
  o: VerifyReceiptOptions,
): Promise<VerifiedReceipt> {
  let payload: Uint8Array;
  let jwk: JWK;
  try {
    const r = await flattenedVerify(receipt, async (header) => {
      if (header.alg !== 'ES256' || header.typ !== RECEIPT_JWS_TYP || !header.jwk)
        throw new Error(`not a run receipt (alg ${header.alg}, typ ${header.typ})`);
      jwk = header.jwk;
      return crypto.subtle.importKey(
        'jwk',
        { ...header.jwk, ext: true },
        { name: 'ECDSA', namedCurve: 'P-256' },
        false,
        ['verify'],
      );
    });
    payload = r.payload;
  } catch (e) {
    throw new AgentError(
      'receipt-signature',
      `run receipt signature does not verify: ${(e as Error).message}`,
    );
  }
  const body = JSON.parse(utf8.decode(payload)) as ReceiptBody;
  if (body.type !== RECEIPT_TYPE)
    throw new AgentError('receipt-type', `receipt type is ${String(body.type)}`);
  const expected = await receiptReportData(jwk!);
  if (body.attestation.reportData !== toHex(expected))
    throw new AgentError('receipt-binding', 'receipt attestation.reportData does not bind the signing key');
  const evidence = fromBase64(body.attestation.evidence);
  const appraisal = await o.registry.get(body.attestation.kind as TeeKind).appraiseEvidence(evidence, {
    at: o.at,
    collateral: o.collateral,
    expectedReportData: expected,
    ...(o.trustAnchors ? { trustAnchors: o.trustAnchors } : {}),
  });
  const out: VerifiedReceipt = { body, appraisal };
  if (o.earKey && body.ear) {
    const ear = await verifyEar(body.ear, o.earKey, { at: o.at });
    // The token (the broker's) speaks for this run only if it describes the TEE whose evidence binds the receipt key.
    const mismatch = earDisagreement(ear, appraisal);
    if (mismatch.length > 0) {
      throw new AgentError(
        'receipt-ear-mismatch',
        `the receipt's EAR token describes another TEE than its evidence (${mismatch.join(', ')} differ)`,
      );
    }
    out.ear = ear;
  }
  return out;
}

/** The TEE claims a receipt records: the EAR payload, decoded (the receipt's reader verifies it). */
export function earClaimsOf(token: string | null): Record<string, unknown> | null {
  return token ? (decodeJwt(token) as Record<string, unknown>) : null;
}
