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
 *
 * verifyEar also reads the EAR of Trustee's attestation service (profile
 * `tag:github.com,2024:confidential-containers/Trustee`), whose claims live elsewhere: everything a
 * verifier extracted sits in `submods.cpu0["ear.veraison.annotated-evidence"]`, under the TEE's name
 * (`tdx`, `snp`, `sample`, …) next to `report_data`, `runtime_data_claims` (the KBS runtime data:
 * `nonce`, `tee-pubkey`) and, with init-data, `init_data` (digest) and `init_data_claims`. EarResult's
 * `teePubkey` and `initData` give the same things whichever profile the token has.
 */
import { importJWK, type JWK, type JWTPayload, errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import { isObject, toBase64Url } from '../../util/index.js';
import { MEASUREMENT_CLAIMS } from '../common/appraise.js';
import {
  type Appraisal,
  AttestationError,
  type AttestationErrorCode,
  type EarStatus,
  type Finding,
  STATUS_ORDER,
  TEE_KINDS,
  type TeeKind,
  type TrustVector,
  worseStatus,
} from '../common/types.js';

export const EAR_PROFILE = 'tag:github.com,2023:veraison/ear';
/** The profile of EARs from Trustee's attestation service (its `DEFAULT_PROFILE`). */
export const TRUSTEE_EAR_PROFILE = 'tag:github.com,2024:confidential-containers/Trustee';
export type EarProfile = typeof EAR_PROFILE | typeof TRUSTEE_EAR_PROFILE;
export const EAR_DEVELOPER = 'https://cloister.dev';
export const DEFAULT_POLICY_ID = 'cloister:policy/default';
/** Results are short-lived: a relying party should ask again rather than trust an old judgement. */
export const DEFAULT_EAR_LIFETIME_S = 3600;
/**
 * Clock skew allowed on `exp` and `iat`, in seconds: enough for two NTP-synchronised machines, short
 * enough that an expired token is not a credential for another minute.
 */
export const EAR_CLOCK_SKEW_S = 5;

type Key = CryptoKey | JsonWebKey;

export interface IssueEarOptions {
  /** ES256 (P-256) private key, as a CryptoKey or a JWK with `d`. */
  signingKey: Key;
  /** `ear.verifier-id.build`, e.g. "cloister 0.1.0". */
  build?: string;
  /** Bound into `eat_nonce` (bytes are base64url-encoded, strings used as they are: a KBS challenge). */
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
  profile: EarProfile;
  issuedAt: Date;
  expiresAt?: Date;
  verifierId: { developer: string; build: string };
  nonce?: string;
  /** The worst status over all submodules. */
  status: EarStatus;
  submods: Record<string, EarSubmod>;
  /** The `cloister.`-prefixed top-level claims the issuer added. */
  extraClaims: Record<string, unknown>;
  /**
   * The TEE's key the token vouches for: `cloister.tee-pubkey`, or in a Trustee EAR
   * `submods.cpu0…annotated-evidence.runtime_data_claims["tee-pubkey"]`. Unchecked JSON.
   */
  teePubkey?: unknown;
  /** Checked init-data: `cloister.init-data`, or a Trustee EAR's `{digest: init_data, claims: init_data_claims}`. */
  initData?: unknown;
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

export interface VerifyEarOptions extends VerifyEarProfileOptions {
  /** Time at which the EAR must be valid; default now. */
  at?: Date;
  /** When set, `eat_nonce` must equal it. */
  nonce?: Uint8Array | string;
}

function bad(code: AttestationErrorCode, message: string, cause?: unknown): never {
  throw new AttestationError('verify', code, message, cause === undefined ? undefined : { cause });
}

function readStatus(v: unknown, where: string): EarStatus {
  if (typeof v !== 'string' || !STATUS_ORDER.includes(v as EarStatus)) {
    bad('ear-malformed', `${where} ear.status ${JSON.stringify(v)} is not an EAR status`);
  }
  return v as EarStatus;
}

function readSubmod(name: string, v: unknown, profile: EarProfile): EarSubmod {
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
  if (profile === TRUSTEE_EAR_PROFILE) return readTrusteeSubmod(v, status, trustVector, claims);
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

/** Trustee's names of device TEEs: their claims sit beside the CPU's in the same submodule. */
const TRUSTEE_DEVICES: ReadonlySet<string> = new Set(['nvidia', 'sampledevice']);

/**
 * A Trustee submodule: the kind is the one known CPU TEE name among the annotated evidence's keys
 * (Trustee puts the claims of additional evidence, e.g. `nvidia`, next to the CPU's), and no
 * `cloister.*` claims exist. Trustee's policies may call a sample TEE affirming; here it never is, nor
 * is anything with sample evidence in it, whatever else is there.
 */
function readTrusteeSubmod(
  v: Record<string, unknown>,
  status: EarStatus,
  trustVector: TrustVector,
  claims: Record<string, unknown>,
): EarSubmod {
  // Trustee names the kinds Cloister knows as Cloister does.
  const kinds = TEE_KINDS.filter((k) => Object.hasOwn(claims, k));
  const cpus = kinds.filter((k) => !TRUSTEE_DEVICES.has(k));
  const kind = cpus.length === 1 ? cpus[0] : cpus.length === 0 && kinds.length === 1 ? kinds[0] : undefined;
  const insecure = Object.hasOwn(claims, 'sample') || Object.hasOwn(claims, 'sampledevice');
  const policyId = v['ear.appraisal-policy-id'];
  return {
    status: insecure ? worseStatus(status, 'warning') : status,
    ...(kind ? { kind } : {}),
    trustVector,
    claims,
    policyId: typeof policyId === 'string' ? policyId : '',
    reasons: insecure
      ? [{ check: 'insecure', status: 'warning', message: 'software-only TEE: insecure' }]
      : [],
    insecure,
  };
}

export interface VerifyEarProfileOptions {
  /**
   * Accept a token without `exp` (EAR makes it optional; Veraison's 2022 examples have none). Off by
   * default: a result without an expiry would vouch for a TEE forever.
   */
  allowNoExpiry?: boolean;
  /** Seconds of clock skew allowed on `exp` and `iat`; default EAR_CLOCK_SKEW_S. */
  clockToleranceSeconds?: number;
}

/** Checks an EAR's signature (ES256 only), profile, times and shape, and returns its typed content. */
export async function verifyEar(
  token: string,
  publicKey: Key,
  options: VerifyEarOptions = {},
): Promise<EarResult> {
  const at = options.at ?? new Date();
  const skew = options.clockToleranceSeconds ?? EAR_CLOCK_SKEW_S;
  let payload: JWTPayload;
  try {
    const key = await asKey(publicKey, 'verify');
    // Only the given key counts: Trustee puts its key in the header (`jwk`), which proves nothing.
    ({ payload } = await jwtVerify(token, key, {
      algorithms: ['ES256'],
      currentDate: at,
      clockTolerance: skew,
      requiredClaims: ['iat'],
    }));
  } catch (e) {
    if (e instanceof joseErrors.JWTExpired) bad('ear-expired', `EAR expired: ${e.message}`, e);
    if (e instanceof joseErrors.JWSSignatureVerificationFailed) {
      bad('ear-bad-signature', 'EAR signature does not verify with the given key', e);
    }
    bad('ear-malformed', `EAR rejected: ${(e as Error).message}`, e);
  }
  const profile = payload.eat_profile;
  if (profile !== EAR_PROFILE && profile !== TRUSTEE_EAR_PROFILE) {
    bad(
      'ear-bad-profile',
      `EAR profile ${JSON.stringify(profile)} is neither ${EAR_PROFILE} nor ${TRUSTEE_EAR_PROFILE}`,
    );
  }
  if (payload.exp === undefined && !options.allowNoExpiry) {
    bad('ear-no-expiry', 'EAR has no exp: an attestation result without an expiry is refused');
  }
  const iat = payload.iat!;
  if (iat * 1000 > at.getTime() + skew * 1000) {
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
    submods[name] = readSubmod(name, v, profile);
    status = worseStatus(status, submods[name].status);
  }
  const nonce = payload.eat_nonce;
  if (nonce !== undefined && typeof nonce !== 'string')
    bad('ear-malformed', 'EAR eat_nonce must be a string');
  if (options.nonce !== undefined) {
    const want = typeof options.nonce === 'string' ? options.nonce : toBase64Url(options.nonce);
    if (nonce !== want) bad('ear-nonce-mismatch', 'EAR eat_nonce is not the nonce of this session');
  }
  const extraClaims = Object.fromEntries(Object.entries(payload).filter(([k]) => k.startsWith('cloister.')));
  const located =
    profile === TRUSTEE_EAR_PROFILE ? trusteeLocations(submods.cpu0) : cloisterLocations(extraClaims);
  return {
    profile,
    issuedAt: new Date(iat * 1000),
    ...(payload.exp !== undefined ? { expiresAt: new Date(payload.exp * 1000) } : {}),
    verifierId: { developer: vid.developer, build: vid.build },
    ...(nonce !== undefined ? { nonce } : {}),
    status,
    submods,
    extraClaims,
    ...located,
  };
}

function cloisterLocations(extra: Record<string, unknown>): Pick<EarResult, 'teePubkey' | 'initData'> {
  return {
    ...(extra['cloister.tee-pubkey'] !== undefined ? { teePubkey: extra['cloister.tee-pubkey'] } : {}),
    ...(extra['cloister.init-data'] !== undefined ? { initData: extra['cloister.init-data'] } : {}),
  };
}

/** Where Trustee's EAR broker (transform_claims) puts the KBS runtime data and init-data. */
function trusteeLocations(cpu: EarSubmod | undefined): Pick<EarResult, 'teePubkey' | 'initData'> {
  if (!cpu) return {};
  const rt = cpu.claims.runtime_data_claims;
  const key = isObject(rt) ? rt['tee-pubkey'] : undefined;
  const digest = cpu.claims.init_data;
  return {
    ...(key !== undefined ? { teePubkey: key } : {}),
    ...(typeof digest === 'string'
      ? { initData: { digest, claims: cpu.claims.init_data_claims ?? null } }
      : {}),
  };
}

/** Trustee's claim paths (annotated evidence, docs/tcb_claims.md) for Cloister's measurement claims. */
const TRUSTEE_MEASUREMENTS: Record<string, readonly string[]> = {
  measurement: ['snp', 'measurement'],
  host_data: ['snp', 'host_data'],
  mr_td: ['tdx', 'quote', 'body', 'mr_td'],
  rtmr0: ['tdx', 'quote', 'body', 'rtmr_0'],
  rtmr1: ['tdx', 'quote', 'body', 'rtmr_1'],
  rtmr2: ['tdx', 'quote', 'body', 'rtmr_2'],
  rtmr3: ['tdx', 'quote', 'body', 'rtmr_3'],
  mr_enclave: ['sgx', 'body', 'mr_enclave'],
  mr_signer: ['sgx', 'body', 'mr_signer'],
};

function trusteeMeasurements(claims: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, path] of Object.entries(TRUSTEE_MEASUREMENTS)) {
    let v: unknown = claims;
    for (const p of path) v = isObject(v) ? v[p] : undefined;
    if (v !== undefined) out[name] = v;
  }
  return out;
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
  // A Trustee submodule names its TEE only through its claims: without one Cloister knows, no match.
  if (ear.profile === TRUSTEE_EAR_PROFILE && cpu.kind === undefined) return ['kind'];
  const trustee = ear.profile === TRUSTEE_EAR_PROFILE;
  const theirs = trustee ? trusteeMeasurements(cpu.claims) : cpu.claims;
  const same = (a: unknown, b: unknown) =>
    typeof a === 'string' && typeof b === 'string' ? a.toLowerCase() === b.toLowerCase() : a === b;
  return MEASUREMENT_CLAIMS.filter((c) => {
    if (!(c in appraisal.claims)) return false;
    // Cloister's own tokens carry the claims it wrote; a Trustee token whose claims are not where
    // Trustee puts them for this TEE vouches for nothing, rather than agreeing by saying nothing.
    if (!(c in theirs)) return trustee && c in TRUSTEE_MEASUREMENTS;
    return !same(theirs[c], appraisal.claims[c]);
  });
}
