/**
 * CoCo init-data (Trustee's initdata specification, version 0.1.0): configuration the host hands a TEE
 * at launch, whose digest the host must also put into a field of the TEE's evidence — TDX
 * `mr_config_id` (48 bytes), SEV-SNP `host_data` (32 bytes), and the insecure `sample` TEE's `host_data`
 * (32 bytes, for rehearsing init-data policies without hardware). An attester that sends its init-data with
 * its evidence has it checked against that field here; once it matches, policies see its contents as
 * `init_data` and the attestation token carries it (`cloister.init-data`).
 *
 * The digest is the hash named by `algorithm` over the body exactly as sent (UTF-8), cut or zero-padded
 * to the field's length: another encoding of the same content is another digest, as the spec says.
 * Absent init-data is not detected here: a policy that relies on it requires `init_data.digest`.
 */
import { parse as parseToml } from 'smol-toml';
import type { Appraisal, EarResult } from '../attest/index.js';
import { AttestationError } from '../attest/types.js';
import { bs, toHex, utf8 } from '../util/index.js';
import {
  INIT_DATA_FIELDS as BINDING_FIELDS,
  INIT_DATA_HASHES,
  type InitDataHash,
  initDataHash,
} from '../wire/index.js';
import { KbsError } from './errors.js';

export const INIT_DATA_VERSION = '0.1.0';
/**
 * Enough for guest-component configs and a modest agent policy; the contents travel in the attestation
 * token, and a policy sees strings up to this length (INPUT_LIMITS.maxStringLength).
 */
export const MAX_INIT_DATA_BYTES = 64 * 1024;

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

/** Init-data as received: the body and its digest under each algorithm, not yet parsed. */
export interface ReceivedInitData {
  format: 'toml' | 'json';
  body: string;
  digests: Record<InitDataHash, string>;
}

const bad = (message: string) => new KbsError('bad-init-data', message);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/**
 * Checks the `init-data` member's format and size and hashes its body under every algorithm the spec
 * allows (cheap next to appraisal). The body is parsed only once its digest has been found in verified
 * evidence (bindInitData), so a requester without a TEE cannot make the broker parse anything.
 */
export async function receiveInitData(init: { format: string; body: string }): Promise<ReceivedInitData> {
  const format = init.format.toLowerCase();
  if (format !== 'toml' && format !== 'json')
    throw bad(`init-data format must be "toml" or "json", got ${JSON.stringify(init.format)}`);
  const bytes = bs(utf8.encode(init.body));
  if (bytes.length > MAX_INIT_DATA_BYTES)
    throw bad(`init-data body is ${bytes.length} bytes; at most ${MAX_INIT_DATA_BYTES} are accepted`);
  const digests = {} as Record<InitDataHash, string>;
  for (const h of INIT_DATA_HASHES) digests[h] = toHex(new Uint8Array(await crypto.subtle.digest(h, bytes)));
  return { format, body: init.body, digests };
}

/**
 * Finds the init-data's digest in the CPU evidence's init-data field, then parses the body. Refuses
 * evidence whose TEE has no such field (`init-data-unbound`: unbound init-data would be the host's word
 * alone) or whose field holds another value (`init-data-mismatch`), and a bound body that is not valid
 * init-data (`400 bad-init-data`).
 */
export function bindInitData(init: ReceivedInitData, cpu: Appraisal): InitData {
  const field = BINDING_FIELDS[cpu.kind];
  const got = field ? cpu.claims[field.claim] : undefined;
  if (!field || typeof got !== 'string') {
    throw new AttestationError(
      'appraise',
      'init-data-unbound',
      `${cpu.kind} evidence has no init-data field (TDX mr_config_id, SEV-SNP host_data, sample host_data set by --init-data), so the init-data sent cannot be checked`,
    );
  }
  const fitted = (hex: string) => hex.slice(0, field.bytes * 2).padEnd(field.bytes * 2, '0');
  const matched = INIT_DATA_HASHES.find((h) => fitted(init.digests[h]) === got.toLowerCase());
  if (!matched) {
    throw new AttestationError(
      'appraise',
      'init-data-mismatch',
      `the init-data's digest is not the evidence's ${field.claim} (${got})`,
    );
  }
  const doc = parseDocument(init);
  if (initDataHash(doc.algorithm) !== matched) {
    throw new AttestationError(
      'appraise',
      'init-data-mismatch',
      `the init-data names ${doc.algorithm}, but its ${matched} digest is what the evidence's ${field.claim} holds`,
    );
  }
  return { format: init.format, ...doc, digest: init.digests[matched] };
}

function parseDocument(init: ReceivedInitData): Omit<InitData, 'format' | 'digest'> {
  let doc: unknown;
  try {
    doc = init.format === 'toml' ? parseToml(init.body) : JSON.parse(init.body);
  } catch (e) {
    throw bad(
      `init-data body is not valid ${init.format.toUpperCase()}: ${(e as Error).message.split('\n')[0]}`,
    );
  }
  if (!isRecord(doc)) throw bad('init-data body must be a table/object');
  const { version, algorithm, data } = doc;
  if (version !== INIT_DATA_VERSION)
    throw bad(`init-data version must be "${INIT_DATA_VERSION}", got ${JSON.stringify(version)}`);
  if (typeof algorithm !== 'string' || !initDataHash(algorithm))
    throw bad(`init-data algorithm must be sha256, sha384 or sha512, got ${JSON.stringify(algorithm)}`);
  // No prototype: a file named "__proto__" is kept as data, not taken as one.
  const entries = Object.create(null) as Record<string, string>;
  if (data !== undefined) {
    if (!isRecord(data)) throw bad('init-data "data" must be a table of strings');
    for (const [k, v] of Object.entries(data)) {
      if (typeof v !== 'string') throw bad(`init-data data.${k} must be a string`);
      entries[k] = v;
    }
  }
  return { version, algorithm, data: entries };
}

/** The checked init-data an attestation token carries, if any. */
export function initDataOfEar(ear: EarResult): Record<string, unknown> | undefined {
  const v = ear.extraClaims[INIT_DATA_CLAIM];
  return isRecord(v) ? v : undefined;
}
