/**
 * Attested receipts: in-toto Statements in DSSE envelopes signed by a key that TEE evidence vouches
 * for, the one envelope and the one verifier every receipt kind shares (docs/design.md): training
 * receipts today, inference, federated and data-lineage receipts next. Web-standard.
 *
 * Design (as run receipts, receipt.ts, with a context and the standard envelope): a fresh ES256 key per
 * job. Before the job starts, the TEE collects evidence whose report data is
 *
 *   SHA-512("cloister-receipt/v1\n" ‖ JCS(the key's RFC 7638 members) ‖ context)
 *
 * so the hardware vouches that the private key was made inside this TEE (it is held only in this
 * process's memory) and for this job: the context binds what the job is, e.g. a training job's manifest
 * digest. JCS output is a JSON object, which ends at its closing brace, so the context that follows
 * cannot be confused with the key. The statement's predicate carries `attestation` (the public key,
 * the evidence, the context and the broker's EAR token), so the envelope alone can be checked offline,
 * years later, by anyone with the vendor collateral.
 */
import { calculateJwkThumbprint, decodeJwt, type JWK } from 'jose';
import {
  certTableCollateral,
  chainSources,
  type EarResult,
  earDisagreement,
  verifyEar,
} from '../attest/index.js';
import type { Appraisal, CollateralSource, TeeKind, VerifierRegistry } from '../attest/types.js';
import {
  canonicalizeBytes,
  concatBytes,
  equalBytes,
  fromBase64,
  fromHex,
  toBase64Url,
  toHex,
  utf8,
} from '../util/index.js';
import {
  type DsseEnvelope,
  DsseError,
  es256Signer,
  es256Verifier,
  generateSigningKey,
  IN_TOTO_PAYLOAD_TYPE,
  type InTotoStatement,
  parseEnvelope,
  parseStatement,
  signEnvelope,
  verifyEnvelope,
} from '../wire/index.js';
import type { CpuAttester } from './evidence/types.js';

export const ATTESTED_RECEIPT_LABEL = 'cloister-receipt/v1\n';
const LABEL = utf8.encode(ATTESTED_RECEIPT_LABEL);

/** What a receipt's predicate carries under `attestation`: enough to verify the envelope offline. */
export interface ReceiptAttestation {
  /** The signing key, RFC 7638 members only. */
  publicJwk: JWK;
  /** TEE kind of the evidence ("tdx", "snp", "sgx", "sample"). */
  kind: string;
  /** The evidence, base64url. */
  evidence: string;
  /** SEV-SNP: the certificate table the host attached, base64url. */
  auxblob?: string;
  /** The report data the evidence carries, lower-case hex (64 bytes). */
  reportData: string;
  /** The context bound with the key, lower-case hex (e.g. a manifest digest). */
  context: string;
  /** The key broker's EAR token for this job's attestation; null when no broker was asked. */
  ear: string | null;
}

export interface AttestedSigner {
  publicJwk: JWK;
  privateKey: CryptoKey;
  /** The key's RFC 7638 thumbprint (base64url SHA-256): the DSSE keyid. */
  keyid: string;
  /** The evidence binding `publicJwk` and the context, collected when the key was made. */
  attestation: Omit<ReceiptAttestation, 'ear'>;
  /** True for the software `sample` TEE, whose receipts prove nothing. */
  insecure: boolean;
}

export type AttestedReceiptErrorCode =
  /** Not a DSSE envelope holding an in-toto Statement with a well-formed `attestation`. */
  | 'receipt-malformed'
  /** The envelope's payload type is not an in-toto Statement's. */
  | 'receipt-payload-type'
  /** The Statement's predicate type is not the one asked for. */
  | 'receipt-predicate-type'
  /** No signature verifies under the key the receipt names. */
  | 'receipt-signature'
  /** The evidence's report data does not bind the signing key and context. */
  | 'receipt-binding'
  /** The key was bound to another context than the one expected. */
  | 'receipt-context'
  /** The EAR token describes another TEE than the evidence. */
  | 'receipt-ear-mismatch';

export class AttestedReceiptError extends Error {
  override name = 'AttestedReceiptError';
  constructor(
    readonly code: AttestedReceiptErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

function thumbprintMembers(jwk: JWK): Record<string, unknown> {
  return { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
}

/** The 64 bytes of report data that bind a receipt key to a context. */
export async function attestedReportData(publicJwk: JWK, context: Uint8Array): Promise<Uint8Array> {
  const msg = concatBytes(LABEL, canonicalizeBytes(thumbprintMembers(publicJwk)), context);
  return new Uint8Array(await crypto.subtle.digest('SHA-512', msg.slice()));
}

/**
 * A fresh ES256 key whose evidence from `attester` binds it and `context` (for a training job, the
 * 32-byte manifest digest). Call it once per job, before anything the receipt will vouch for happens.
 */
export async function createAttestedSigner(
  attester: CpuAttester,
  context: Uint8Array,
): Promise<AttestedSigner> {
  const { publicJwk, privateKey } = await generateSigningKey();
  const reportData = await attestedReportData(publicJwk, context);
  const e = await attester.collect(reportData);
  return {
    publicJwk,
    privateKey,
    keyid: await calculateJwkThumbprint(publicJwk, 'sha256'),
    insecure: attester.insecure,
    attestation: {
      publicJwk,
      kind: e.kind,
      evidence: toBase64Url(e.evidence),
      ...(e.auxblob && e.auxblob.length > 0 ? { auxblob: toBase64Url(e.auxblob) } : {}),
      reportData: toHex(reportData),
      context: toHex(context),
    },
  };
}

/**
 * Signs a Statement as a DSSE envelope (payload: the Statement in JCS, so the same facts give the same
 * bytes), its predicate extended with `attestation` (the signer's evidence and the broker's `ear`).
 */
export async function signStatement<P extends object>(
  statement: InTotoStatement<P>,
  signer: AttestedSigner,
  options: { ear?: string | null } = {},
): Promise<DsseEnvelope> {
  if ('attestation' in statement.predicate)
    throw new TypeError('the predicate already has an attestation member; signStatement adds it');
  const attestation: ReceiptAttestation = { ...signer.attestation, ear: options.ear ?? null };
  const signed = { ...statement, predicate: { ...statement.predicate, attestation } };
  return signEnvelope(IN_TOTO_PAYLOAD_TYPE, canonicalizeBytes(signed), [
    es256Signer(signer.privateKey, signer.keyid),
  ]);
}

export interface VerifyAttestedOptions {
  registry: VerifierRegistry;
  /** Verification time for certificates, collateral and the EAR token. */
  at: Date;
  /** Vendor collateral; the receipt's own SEV-SNP certificate table is consulted first. */
  collateral: CollateralSource;
  trustAnchors?: Uint8Array[];
  /** The broker's EAR verification key; with it, the receipt's EAR token (if any) must verify. */
  earKey?: CryptoKey | JsonWebKey;
  /**
   * When the EAR token must have been valid, from the Statement (e.g. a job's start and end): the token
   * is checked at its issue time moved into this window, so a job longer than the token's lifetime
   * still verifies while a token from before or after the job does not. Default: checked at `at`.
   */
  earWindow?: (statement: InTotoStatement<Record<string, unknown>>) => { from: Date; to: Date } | undefined;
  /** Predicate types accepted; default any. */
  predicateType?: string | readonly string[];
  /** When given, the context the key was bound to must be exactly these bytes. */
  context?: Uint8Array;
}

export interface VerifiedAttestedEnvelope<P = Record<string, unknown>> {
  statement: InTotoStatement<P & { attestation: ReceiptAttestation }>;
  /** The appraisal of the evidence binding the key; the caller judges its status. */
  appraisal: Appraisal;
  /** The verified EAR, when `earKey` was given and the receipt carries a token. */
  ear?: EarResult;
  /** Thumbprint of the signing key. */
  keyid: string;
  /** The bound context. */
  context: Uint8Array;
}

const HEX = /^(?:[0-9a-f]{2})*$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readAttestation(v: unknown): ReceiptAttestation {
  const bad = (why: string) => new AttestedReceiptError('receipt-malformed', `predicate.attestation ${why}`);
  if (!isRecord(v)) throw bad('is missing (not an attested receipt)');
  const jwk = v.publicJwk;
  if (
    !isRecord(jwk) ||
    jwk.kty !== 'EC' ||
    jwk.crv !== 'P-256' ||
    typeof jwk.x !== 'string' ||
    typeof jwk.y !== 'string'
  )
    throw bad('.publicJwk must be an EC P-256 public JWK');
  for (const k of ['kind', 'evidence', 'reportData', 'context'] as const)
    if (typeof v[k] !== 'string') throw bad(`.${k} must be a string`);
  if (!HEX.test(v.reportData as string)) throw bad('.reportData must be lower-case hex');
  if (!HEX.test(v.context as string)) throw bad('.context must be lower-case hex');
  if (v.auxblob !== undefined && typeof v.auxblob !== 'string') throw bad('.auxblob must be a string');
  if (v.ear !== null && typeof v.ear !== 'string') throw bad('.ear must be a string or null');
  return v as unknown as ReceiptAttestation;
}

function decode(s: string, what: string): Uint8Array {
  try {
    return fromBase64(s);
  } catch {
    throw new AttestedReceiptError('receipt-malformed', `predicate.attestation.${what} is not base64url`);
  }
}

/** The time the EAR token is checked at (VerifyAttestedOptions.earWindow). */
function earTime(
  token: string,
  o: VerifyAttestedOptions,
  statement: InTotoStatement<Record<string, unknown>>,
): Date {
  const w = o.earWindow?.(statement);
  if (!w || Number.isNaN(w.from.getTime()) || Number.isNaN(w.to.getTime()) || w.to < w.from) return o.at;
  let iat: number | undefined;
  try {
    // Unverified, only to choose the instant; the signature and lifetime are checked at that instant.
    iat = decodeJwt(token).iat;
  } catch {
    return o.at; // verifyEar names what is wrong with it
  }
  if (typeof iat !== 'number') return o.at;
  return new Date(Math.min(Math.max(iat * 1000, w.from.getTime()), w.to.getTime()));
}

/**
 * Verifies an attested receipt: parse the envelope and Statement → the DSSE signature under the key
 * the predicate names → that key and the context are what the evidence's report data binds → the
 * evidence (parse → verify → appraise with the registry, expecting that report data) → with `earKey`,
 * the broker's EAR token and that it describes the same TEE. The caller judges the appraisal's status
 * and the predicate's meaning. Evidence and EAR failures are the attestation layer's errors (their
 * codes: report-data-mismatch, ear-bad-signature, …); the receipt's own are AttestedReceiptError.
 */
export async function verifyAttestedEnvelope<P = Record<string, unknown>>(
  input: DsseEnvelope | string | Uint8Array,
  o: VerifyAttestedOptions,
): Promise<VerifiedAttestedEnvelope<P>> {
  let envelope: DsseEnvelope;
  try {
    envelope = parseEnvelope(input);
  } catch (e) {
    throw new AttestedReceiptError('receipt-malformed', (e as Error).message, { cause: e });
  }
  if (envelope.payloadType !== IN_TOTO_PAYLOAD_TYPE)
    throw new AttestedReceiptError(
      'receipt-payload-type',
      `payload type is ${JSON.stringify(envelope.payloadType)}, not an in-toto Statement (${IN_TOTO_PAYLOAD_TYPE})`,
    );
  let statement: InTotoStatement<Record<string, unknown>>;
  try {
    statement = parseStatement(fromBase64(envelope.payload));
  } catch (e) {
    throw new AttestedReceiptError('receipt-malformed', (e as Error).message, { cause: e });
  }
  if (o.predicateType !== undefined) {
    const wanted = typeof o.predicateType === 'string' ? [o.predicateType] : o.predicateType;
    if (!wanted.includes(statement.predicateType))
      throw new AttestedReceiptError(
        'receipt-predicate-type',
        `predicate type is ${statement.predicateType}, expected ${wanted.join(' or ')}`,
      );
  }
  const attestation = readAttestation(statement.predicate.attestation);
  const jwk = attestation.publicJwk;
  const keyid = await calculateJwkThumbprint(thumbprintMembers(jwk) as JWK, 'sha256');
  try {
    // The key comes from the unverified payload: it counts only once the evidence binds it (below).
    const verifier = await es256Verifier(jwk as JsonWebKey, keyid);
    await verifyEnvelope(envelope, [verifier], { payloadTypes: [IN_TOTO_PAYLOAD_TYPE] });
  } catch (e) {
    const why =
      e instanceof DsseError
        ? `no signature by the key its attestation names (${keyid})`
        : `the receipt key is unusable: ${(e as Error).message}`;
    throw new AttestedReceiptError('receipt-signature', `receipt signature does not verify: ${why}`, {
      cause: e,
    });
  }
  const context = fromHex(attestation.context);
  if (o.context !== undefined && !equalBytes(o.context, context))
    throw new AttestedReceiptError(
      'receipt-context',
      `the receipt key is bound to context ${attestation.context}, expected ${toHex(o.context)}`,
    );
  const expected = await attestedReportData(jwk, context);
  if (attestation.reportData !== toHex(expected))
    throw new AttestedReceiptError(
      'receipt-binding',
      'predicate.attestation.reportData does not bind the signing key and context',
    );
  const evidence = decode(attestation.evidence, 'evidence');
  const aux = attestation.auxblob ? decode(attestation.auxblob, 'auxblob') : undefined;
  const appraisal = await o.registry.get(attestation.kind as TeeKind).appraiseEvidence(evidence, {
    at: o.at,
    collateral: aux ? chainSources(certTableCollateral(aux), o.collateral) : o.collateral,
    expectedReportData: expected,
    ...(o.trustAnchors ? { trustAnchors: o.trustAnchors } : {}),
  });
  const out: VerifiedAttestedEnvelope<P> = {
    statement: statement as unknown as VerifiedAttestedEnvelope<P>['statement'],
    appraisal,
    keyid,
    context,
  };
  if (o.earKey && attestation.ear) {
    const ear = await verifyEar(attestation.ear, o.earKey, { at: earTime(attestation.ear, o, statement) });
    // The broker's token speaks for this receipt only if it describes the TEE whose evidence binds the key.
    const mismatch = earDisagreement(ear, appraisal);
    if (mismatch.length > 0)
      throw new AttestedReceiptError(
        'receipt-ear-mismatch',
        `the receipt's EAR token describes another TEE than its evidence (${mismatch.join(', ')} differ)`,
      );
    out.ear = ear;
  }
  return out;
}
