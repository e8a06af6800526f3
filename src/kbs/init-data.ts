/**
 * CoCo init-data (Trustee's initdata specification, version 0.1.0): configuration the host hands a TEE
 * at launch, whose digest the host must also put into a field of the TEE's evidence — TDX
 * `mr_config_id` (48 bytes), SEV-SNP `host_data` (32 bytes). An attester that sends its init-data with
 * its evidence has it checked against that field here; once it matches, policies see its contents as
 * `init_data` and the attestation token carries it (`cloister.init-data`).
 *
 * The digest is the hash named by `algorithm` over the body exactly as sent (UTF-8), cut or zero-padded
 * to the field's length: another encoding of the same content is another digest, as the spec says.
 */
import { parse as parseToml } from 'smol-toml';
import type { Appraisal } from '../attest/common/types.js';
import { AttestationError } from '../attest/common/types.js';
import type { EarResult } from '../attest/ear/index.js';
import { bs, toHex, utf8 } from '../util/bytes.js';
import { ProtocolError } from './protocol.js';

export const INIT_DATA_VERSION = '0.1.0';
/**
 * Enough for guest-component configs and a modest agent policy; the contents travel in the attestation
 * token, and a policy sees strings up to this length (INPUT_LIMITS.maxStringLength).
 */
export const MAX_INIT_DATA_BYTES = 64 * 1024;

/** The spec's names and IANA's textual names for the same hashes. */
const ALGORITHMS: Record<string, 'SHA-256' | 'SHA-384' | 'SHA-512'> = {
  sha256: 'SHA-256',
  'sha-256': 'SHA-256',
  sha384: 'SHA-384',
  'sha-384': 'SHA-384',
  sha512: 'SHA-512',
  'sha-512': 'SHA-512',
};

/** The evidence claims that carry the init-data digest, in the order they are looked for. */
const BINDING_CLAIMS: readonly { claim: string; bytes: number }[] = [
  { claim: 'mr_config_id', bytes: 48 },
  { claim: 'host_data', bytes: 32 },
];

/** The attestation token's claim that carries checked init-data; policies see it as `init_data`. */
export const INIT_DATA_CLAIM = 'cloister.init-data';

export interface InitData {
  format: 'toml' | 'json';
  version: string;
  algorithm: string;
  /** Lower-case hex of the full digest (before cutting or padding to a field). */
  digest: string;
  /** The `data` table: file name → content. */
  data: Record<string, string>;
}

const bad = (message: string) => new ProtocolError(400, 'bad-init-data', message);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** Parses and hashes the `init-data` member of an attestation request; bad input is a 400. */
export async function parseInitData(init: { format: string; body: string }): Promise<InitData> {
  const format = init.format.toLowerCase();
  if (format !== 'toml' && format !== 'json')
    throw bad(`init-data format must be "toml" or "json", got ${JSON.stringify(init.format)}`);
  const bytes = utf8.encode(init.body);
  if (bytes.length > MAX_INIT_DATA_BYTES)
    throw bad(`init-data body is ${bytes.length} bytes; at most ${MAX_INIT_DATA_BYTES} are accepted`);
  let doc: unknown;
  try {
    doc = format === 'toml' ? parseToml(init.body) : JSON.parse(init.body);
  } catch (e) {
    throw bad(`init-data body is not valid ${format.toUpperCase()}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!isRecord(doc)) throw bad('init-data body must be a table/object');
  const { version, algorithm, data } = doc;
  if (version !== INIT_DATA_VERSION)
    throw bad(`init-data version must be "${INIT_DATA_VERSION}", got ${JSON.stringify(version)}`);
  const hash = typeof algorithm === 'string' ? ALGORITHMS[algorithm.toLowerCase()] : undefined;
  if (!hash)
    throw bad(`init-data algorithm must be sha256, sha384 or sha512, got ${JSON.stringify(algorithm)}`);
  const entries: Record<string, string> = {};
  if (data !== undefined) {
    if (!isRecord(data)) throw bad('init-data "data" must be a table of strings');
    for (const [k, v] of Object.entries(data)) {
      if (typeof v !== 'string') throw bad(`init-data data.${k} must be a string`);
      entries[k] = v;
    }
  }
  const digest = new Uint8Array(await crypto.subtle.digest(hash, bs(bytes)));
  return { format, version, algorithm: algorithm as string, digest: toHex(digest), data: entries };
}

/**
 * Checks that the CPU's evidence carries the init-data digest in its init-data field. Refuses evidence
 * whose TEE has no such field (`init-data-unbound`) or whose field holds another value
 * (`init-data-mismatch`): unbound init-data would be the host's word alone.
 */
export function checkInitDataBinding(init: InitData, cpu: Appraisal): void {
  const field = BINDING_CLAIMS.find((b) => typeof cpu.claims[b.claim] === 'string');
  if (!field) {
    throw new AttestationError(
      'appraise',
      'init-data-unbound',
      `${cpu.kind} evidence has no init-data field (TDX mr_config_id, SEV-SNP host_data), so the init-data sent cannot be checked`,
    );
  }
  const want = init.digest.slice(0, field.bytes * 2).padEnd(field.bytes * 2, '0');
  const got = (cpu.claims[field.claim] as string).toLowerCase();
  if (got !== want) {
    throw new AttestationError(
      'appraise',
      'init-data-mismatch',
      `the init-data's ${init.algorithm} digest is not the evidence's ${field.claim} (${got})`,
    );
  }
}

/** The checked init-data an attestation token carries, if any. */
export function initDataOfEar(ear: EarResult): Record<string, unknown> | undefined {
  const v = ear.extraClaims[INIT_DATA_CLAIM];
  return isRecord(v) ? v : undefined;
}
