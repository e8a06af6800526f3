/**
 * Attestation results as EAR (EAT Attestation Results, draft-ietf-rats-ear) JWTs signed ES256.
 *
 * One submodule per appraised attester (`cpu0`, `gpu0`, …):
 *   ear.status                          affirming | warning | contraindicated | none
 *   ear.trustworthiness-vector          AR4SI claims, hyphenated names as in the draft
 *   ear.appraisal-policy-id             which policy judged it
 *   ear.veraison.annotated-evidence     the claims extracted from the evidence
 *   cloister.kind                       the TEE kind (tdx, snp, nvidia, sample, …)
 *   cloister.reasons                    every finding that is not affirming: [{check, status, message}]
 *   cloister.insecure                   true for the software `sample` TEE, absent otherwise
 *
 * The `cloister.*` names are unregistered private claims (draft-ietf-rats-ear §"Extensions"); a relying
 * party that ignores them still sees the sample TEE as non-affirming through `ear.status`.
 */
import { importJWK, type JWK, type JWTPayload, errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import { toBase64Url } from '../../util/bytes.js';
import { MEASUREMENT_CLAIMS } from '../common/appraise.js';
import {
  type Appraisal,
  AttestationError,
  type EarStatus,
  type Finding,
  STATUS_ORDER,
  type TeeKind,
  type TrustVector,
  worseStatus,
} from '../common/types.js';

export const EAR_PROFILE = 'tag:github.com,2023:veraison/ear';
export const EAR_DEVELOPER = 'https://cloister.dev';
export const DEFAULT_POLICY_ID = 'cloister:policy/default';
/** Results are short-lived: a relying party should ask again rather than trust an old judgement. */
export const DEFAULT_EAR_LIFETIME_S = 3600;
const CLOCK_SKEW_S = 60;

type Key = CryptoKey | JsonWebKey;

export interface IssueEarOptions {
  /** ES256 (P-256) private key, as a CryptoKey or a JWK with `d`. */
  signingKey: Key;
  /** `ear.verifier-id.build`, e.g. "cloister 0.1.0". */
  build?: string;
  /** Bound into `eat_nonce` (bytes are base64url-encoded, strings used as they are). */
  nonce?: Uint8Array | string;
  issuedAt?: Date;
  /** Seconds until `exp`; default one hour. */
  lifetimeSeconds?: number;
  /** `ear.appraisal-policy-id` for every submodule. */
  policyId?: string;
  /** Key id placed in the JWS header. */
  kid?: string;
  /**
   * Further top-level claims under the `cloister.` prefix, e.g. `cloister.tee-pubkey`, the key a key
   * broker encrypts resources to when the token is presented as a bearer token.
   */
  extraClaims?: Record<`cloister.${string}`, unknown>;
}

export interface EarSubmod {
  status: EarStatus;
  kind?: TeeKind;
  trustVector: TrustVector;
  claims: Record<string, unknown>;
  policyId: string;
  /** The findings that were not affirming. */
  reasons: Finding[];
  insecure: boolean;
}

export interface EarResult {
  profile: string;
  issuedAt: Date;
  expiresAt?: Date;
  verifierId: { developer: string; build: string };
  nonce?: string;
  /** The worst status over all submodules. */
  status: EarStatus;
  submods: Record<string, EarSubmod>;
  /** The `cloister.`-prefixed top-level claims the issuer added. */
  extraClaims: Record<string, unknown>;
}

const VECTOR_NAMES: [keyof TrustVector, string][] = [
  ['instance_identity', 'instance-identity'],
  ['configuration', 'configuration'],
  ['executables', 'executables'],
  ['file_system', 'file-system'],
  ['hardware', 'hardware'],
  ['runtime_opaque', 'runtime-opaque'],
  ['storage_opaque', 'storage-opaque'],
  ['sourced_data', 'sourced-data'],
];

async function asKey(key: Key, use: 'sign' | 'verify'): Promise<CryptoKey> {
  if (typeof CryptoKey !== 'undefined' && key instanceof CryptoKey) return key;
  const jwk = key as JsonWebKey;
  if (use === 'verify' && jwk.d !== undefined) {
    const { d: _d, ...pub } = jwk;
    return (await importJWK(pub as JWK, 'ES256')) as CryptoKey;
  }
  return (await importJWK(jwk as JWK, 'ES256')) as CryptoKey;
}

function toSubmod(a: Appraisal, policyId: string): Record<string, unknown> {
  const tv: Record<string, number> = {};
  for (const [ours, theirs] of VECTOR_NAMES) {
    const v = a.trustVector[ours];
    if (v !== undefined && v !== 0) tv[theirs] = v;
  }
  // A software TEE must never read as affirming, whatever its appraisal says.
  const status = a.insecure ? worseStatus(a.status, 'warning') : a.status;
  const reasons = a.findings.filter((f) => f.status !== 'affirming');
  if (a.insecure && !reasons.some((f) => f.check === 'insecure')) {
    reasons.unshift({ check: 'insecure', status: 'warning', message: 'software-only TEE: insecure' });
  }
  return {
    'ear.status': status,
    'ear.trustworthiness-vector': tv,
    'ear.appraisal-policy-id': policyId,
    'ear.veraison.annotated-evidence': a.claims,
    'cloister.kind': a.kind,
    'cloister.reasons': reasons.map(({ check, status, message }) => ({ check, status, message })),
    ...(a.insecure ? { 'cloister.insecure': true } : {}),
  };
}

/** Signs the appraisals (keyed by submodule name: cpu0, gpu0, …) as an EAR JWT. */
export async function issueEar(
  submods: Record<string, Appraisal>,
  options: IssueEarOptions,
): Promise<string> {
  const names = Object.keys(submods);
  if (names.length === 0) throw new TypeError('an EAR needs at least one submodule');
  const policyId = options.policyId ?? DEFAULT_POLICY_ID;
  const iat = Math.floor((options.issuedAt ?? new Date()).getTime() / 1000);
  const payload: JWTPayload = {
    eat_profile: EAR_PROFILE,
    iat,
    exp: iat + (options.lifetimeSeconds ?? DEFAULT_EAR_LIFETIME_S),
    'ear.verifier-id': { developer: EAR_DEVELOPER, build: options.build ?? 'cloister' },
    submods: Object.fromEntries(names.map((n) => [n, toSubmod(submods[n]!, policyId)])),
    ...options.extraClaims,
  };
  if (options.nonce !== undefined) {
    payload.eat_nonce = typeof options.nonce === 'string' ? options.nonce : toBase64Url(options.nonce);
  }
  const key = await asKey(options.signingKey, 'sign');
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', ...(options.kid ? { kid: options.kid } : {}) })
    .sign(key);
}

export interface VerifyEarOptions {
  /** Time at which the EAR must be valid; default now. */
  at?: Date;
  /** When set, `eat_nonce` must equal it. */
  nonce?: Uint8Array | string;
}

function bad(code: string, message: string, cause?: unknown): never {
  throw new AttestationError('verify', code, message, cause === undefined ? undefined : { cause });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readStatus(v: unknown, where: string): EarStatus {
  if (typeof v !== 'string' || !STATUS_ORDER.includes(v as EarStatus)) {
    bad('ear-malformed', `${where} ear.status ${JSON.stringify(v)} is not an EAR status`);
  }
  return v as EarStatus;
}

function readSubmod(name: string, v: unknown): EarSubmod {
  if (!isObject(v)) bad('ear-malformed', `EAR submodule ${name} is not an object`);
  const status = readStatus(v['ear.status'], `EAR submodule ${name}`);
  const tvIn = v['ear.trustworthiness-vector'] ?? {};
  if (!isObject(tvIn)) bad('ear-malformed', `EAR submodule ${name} trustworthiness vector is not an object`);
  const trustVector: TrustVector = {};
  for (const [ours, theirs] of VECTOR_NAMES) {
    const x = tvIn[theirs];
    if (x === undefined) continue;
    if (!Number.isInteger(x) || (x as number) < -128 || (x as number) > 127) {
      bad('ear-malformed', `EAR submodule ${name} claim ${theirs} must be an integer in -128..127`);
    }
    trustVector[ours] = x as number;
  }
  const claims = v['ear.veraison.annotated-evidence'] ?? {};
  if (!isObject(claims)) bad('ear-malformed', `EAR submodule ${name} annotated evidence is not an object`);
  const reasonsIn = v['cloister.reasons'] ?? [];
  if (!Array.isArray(reasonsIn)) bad('ear-malformed', `EAR submodule ${name} cloister.reasons is not a list`);
  const reasons = reasonsIn.map((r, i): Finding => {
    if (!isObject(r) || typeof r.check !== 'string' || typeof r.message !== 'string') {
      bad('ear-malformed', `EAR submodule ${name} reason ${i} needs check, status and message`);
    }
    return { check: r.check, status: readStatus(r.status, `${name} reason ${i}`), message: r.message };
  });
  const insecure = v['cloister.insecure'] === true;
  if (insecure && status === 'affirming') {
    bad(
      'ear-malformed',
      `EAR submodule ${name} is marked insecure yet affirming; refusing a contradictory result`,
    );
  }
  const kind = v['cloister.kind'];
  const policyId = v['ear.appraisal-policy-id'];
  return {
    status,
    ...(typeof kind === 'string' ? { kind: kind as TeeKind } : {}),
    trustVector,
    claims,
    policyId: typeof policyId === 'string' ? policyId : '',
    reasons,
    insecure,
  };
}

/** Checks an EAR's signature (ES256 only), profile, times and shape, and returns its typed content. */
export async function verifyEar(
  token: string,
  publicKey: Key,
  options: VerifyEarOptions = {},
): Promise<EarResult> {
  const at = options.at ?? new Date();
  let payload: JWTPayload;
  try {
    const key = await asKey(publicKey, 'verify');
    ({ payload } = await jwtVerify(token, key, {
      algorithms: ['ES256'],
      currentDate: at,
      clockTolerance: CLOCK_SKEW_S,
      requiredClaims: ['iat'],
    }));
  } catch (e) {
    if (e instanceof joseErrors.JWTExpired) bad('ear-expired', `EAR expired: ${e.message}`, e);
    if (e instanceof joseErrors.JWSSignatureVerificationFailed) {
      bad('ear-bad-signature', 'EAR signature does not verify with the given key', e);
    }
    bad('ear-malformed', `EAR rejected: ${(e as Error).message}`, e);
  }
  if (payload.eat_profile !== EAR_PROFILE) {
    bad('ear-bad-profile', `EAR profile ${JSON.stringify(payload.eat_profile)} is not ${EAR_PROFILE}`);
  }
  const iat = payload.iat!;
  if (iat * 1000 > at.getTime() + CLOCK_SKEW_S * 1000) {
    bad(
      'ear-not-yet-valid',
      `EAR issued at ${new Date(iat * 1000).toISOString()}, after ${at.toISOString()}`,
    );
  }
  const vid = payload['ear.verifier-id'];
  if (!isObject(vid) || typeof vid.developer !== 'string' || typeof vid.build !== 'string') {
    bad('ear-malformed', 'EAR ear.verifier-id must have developer and build strings');
  }
  if (!isObject(payload.submods) || Object.keys(payload.submods).length === 0) {
    bad('ear-malformed', 'EAR has no submods');
  }
  const submods: Record<string, EarSubmod> = {};
  let status: EarStatus = 'none';
  for (const [name, v] of Object.entries(payload.submods)) {
    submods[name] = readSubmod(name, v);
    status = worseStatus(status, submods[name].status);
  }
  const nonce = payload.eat_nonce;
  if (nonce !== undefined && typeof nonce !== 'string')
    bad('ear-malformed', 'EAR eat_nonce must be a string');
  if (options.nonce !== undefined) {
    const want = typeof options.nonce === 'string' ? options.nonce : toBase64Url(options.nonce);
    if (nonce !== want) bad('ear-nonce-mismatch', 'EAR eat_nonce is not the nonce of this session');
  }
  return {
    profile: EAR_PROFILE,
    issuedAt: new Date(iat * 1000),
    ...(payload.exp !== undefined ? { expiresAt: new Date(payload.exp * 1000) } : {}),
    verifierId: { developer: vid.developer, build: vid.build },
    ...(nonce !== undefined ? { nonce } : {}),
    status,
    submods,
    extraClaims: Object.fromEntries(Object.entries(payload).filter(([k]) => k.startsWith('cloister.'))),
  };
}

/**
 * What keeps a verified EAR token from speaking for `appraisal`'s TEE: [] when its `cpu0` names the same
 * kind and agrees on every measurement claim both carry, else the names that differ. A token is another
 * attestation (a broker's, say); it vouches for this TEE only when it describes the same one.
 */
export function earDisagreement(ear: EarResult, appraisal: Appraisal): string[] {
  const cpu = ear.submods.cpu0;
  if (!cpu) return ['cpu0'];
  if (cpu.kind !== undefined && cpu.kind !== appraisal.kind) return ['kind'];
  return MEASUREMENT_CLAIMS.filter(
    (c) => c in cpu.claims && c in appraisal.claims && cpu.claims[c] !== appraisal.claims[c],
  );
}
