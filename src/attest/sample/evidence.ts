/**
 * The `sample` TEE's evidence format and its parse stage. Sample evidence is a JSON object signed with
 * a software key the "TEE" generated itself: it proves nothing about hardware and exists only so that
 * demos and tests can run the whole attestation flow on any machine.
 *
 *   { "tee": "sample", "report_data": b64url (≤ 64 bytes), "measurement": lower-case hex,
 *     "host_data"?: 32 bytes lower-case hex, "debug": false, "public_key": P-256 public JWK,
 *     "signature": b64url ES256 (r‖s) }
 *
 * The signature covers the RFC 8785 canonical JSON of the object without its `signature` member.
 * `host_data` plays SEV-SNP's field of that name: what the "host" set at launch, the CoCo init-data
 * digest when there is one. It is left out when the host set nothing, as evidence before it had none.
 */
import { fromBase64, isObject, toBase64Url, utf8 } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode, REPORT_DATA_SIZE } from '../common/types.js';

export const SAMPLE_TEE = 'sample';
/** A generous bound so that a hostile input cannot make us parse megabytes of JSON. */
export const MAX_EVIDENCE_SIZE = 16 * 1024;
/** Bytes in `host_data`: SEV-SNP's size, so an init-data digest is cut to it the same way. */
export const SAMPLE_HOST_DATA_SIZE = 32;

/** The P-256 public key that signs sample evidence (RFC 7517 JWK, public members only). */
export interface SamplePublicJwk {
  kty: 'EC';
  crv: 'P-256';
  x: string;
  y: string;
}

/** The signed members: what the signature covers. */
export interface SampleEvidenceBody {
  tee: 'sample';
  report_data: string;
  measurement: string;
  host_data?: string;
  debug: boolean;
  public_key: SamplePublicJwk;
}

/** Output of the parse stage: the members decoded, plus the body exactly as it will be verified. */
export interface ParsedSampleEvidence {
  body: SampleEvidenceBody;
  /** Report data as carried, at most 64 bytes (not yet zero-padded). */
  reportData: Uint8Array;
  measurement: string;
  /** Lower-case hex of the 32 bytes the host set, when the evidence carries them. */
  hostData?: string;
  debug: boolean;
  publicKey: SamplePublicJwk;
  /** ES256 signature, r‖s, 64 bytes. */
  signature: Uint8Array;
}

const MEMBERS = ['tee', 'report_data', 'measurement', 'debug', 'public_key', 'signature'];
const OPTIONAL_MEMBERS = ['host_data'];
const JWK_MEMBERS = ['kty', 'crv', 'x', 'y'];

function fail(code: AttestationErrorCode, message: string, cause?: unknown): never {
  throw new AttestationError('parse', code, message, cause === undefined ? undefined : { cause });
}

function b64url(value: unknown, field: string): Uint8Array {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_-]*$/.test(value)) {
    fail('bad-structure', `sample evidence ${field} must be an unpadded base64url string`);
  }
  const bytes = fromBase64(value);
  // Unused trailing bits would let one signature have several spellings; accept only the canonical one.
  if (toBase64Url(bytes) !== value)
    fail('bad-structure', `sample evidence ${field} is not canonical base64url`);
  return bytes;
}

function exactMembers(
  obj: Record<string, unknown>,
  expected: string[],
  what: string,
  optional: string[] = [],
): void {
  const extra = Object.keys(obj).filter((k) => !expected.includes(k) && !optional.includes(k));
  const missing = expected.filter((k) => !(k in obj));
  if (extra.length > 0 || missing.length > 0) {
    const parts = [];
    if (missing.length > 0) parts.push(`missing ${missing.join(', ')}`);
    if (extra.length > 0) parts.push(`unexpected ${extra.join(', ')}`);
    fail(
      'bad-structure',
      `${what} must have exactly the members ${expected.join(', ')} (${parts.join('; ')})`,
    );
  }
}

export function parseSampleEvidence(bytes: Uint8Array): ParsedSampleEvidence {
  if (bytes.length > MAX_EVIDENCE_SIZE) {
    fail('too-large', `sample evidence is ${bytes.length} bytes; at most ${MAX_EVIDENCE_SIZE} are accepted`);
  }
  let json: unknown;
  try {
    json = JSON.parse(utf8.decode(bytes));
  } catch (e) {
    fail('not-json', `sample evidence is not UTF-8 JSON: ${(e as Error).message}`, e);
  }
  if (!isObject(json)) fail('bad-structure', 'sample evidence must be a JSON object');
  if (json.tee !== SAMPLE_TEE) {
    fail('wrong-tee', `sample evidence must say "tee": "sample", not ${JSON.stringify(json.tee)}`);
  }
  exactMembers(json, MEMBERS, 'sample evidence', OPTIONAL_MEMBERS);

  const reportData = b64url(json.report_data, 'report_data');
  if (reportData.length > REPORT_DATA_SIZE) {
    fail('bad-report-data', `sample report_data is ${reportData.length} bytes; at most 64 are allowed`);
  }
  const measurement = json.measurement;
  if (typeof measurement !== 'string' || !/^(?:[0-9a-f]{2})+$/.test(measurement)) {
    fail('bad-measurement', 'sample measurement must be a non-empty lower-case hex string');
  }
  const hostData = json.host_data;
  if (
    hostData !== undefined &&
    (typeof hostData !== 'string' || !new RegExp(`^[0-9a-f]{${SAMPLE_HOST_DATA_SIZE * 2}}$`).test(hostData))
  ) {
    fail('bad-structure', `sample host_data must be ${SAMPLE_HOST_DATA_SIZE} bytes of lower-case hex`);
  }
  if (typeof json.debug !== 'boolean') fail('bad-structure', 'sample evidence debug must be true or false');

  const jwk = json.public_key;
  if (!isObject(jwk)) fail('bad-public-key', 'sample public_key must be a JWK object');
  if ('d' in jwk) {
    fail('private-key-in-evidence', 'sample public_key contains a private key ("d"); the key is compromised');
  }
  exactMembers(jwk, JWK_MEMBERS, 'sample public_key');
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256') {
    fail('bad-public-key', 'sample public_key must be an EC P-256 key (kty "EC", crv "P-256")');
  }
  for (const c of ['x', 'y'] as const) {
    if (b64url(jwk[c], `public_key.${c}`).length !== 32) {
      fail('bad-public-key', `sample public_key.${c} must be 32 bytes`);
    }
  }
  const publicKey: SamplePublicJwk = { kty: 'EC', crv: 'P-256', x: jwk.x as string, y: jwk.y as string };

  const signature = b64url(json.signature, 'signature');
  if (signature.length !== 64) {
    fail('bad-signature-encoding', `sample signature must be 64 bytes (ES256 r‖s), not ${signature.length}`);
  }
  return {
    body: {
      tee: SAMPLE_TEE,
      report_data: json.report_data as string,
      measurement,
      ...(hostData !== undefined ? { host_data: hostData } : {}),
      debug: json.debug,
      public_key: publicKey,
    },
    reportData,
    measurement,
    ...(hostData !== undefined ? { hostData } : {}),
    debug: json.debug,
    publicKey,
    signature,
  };
}
