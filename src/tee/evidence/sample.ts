/**
 * The INSECURE software `sample` TEE for demos on ordinary machines: evidence signed by a key this
 * process generated, which proves nothing about the machine. Every verifier marks it insecure and
 * every default policy refuses it; the agent uses it only when told to (`--allow-sample`).
 *
 * What a real TEE's launch fixes — the measurement, and the host data a host sets to the init-data
 * digest — is settable here, so that measurement pinning and init-data policies can be rehearsed
 * against a dev-mode broker before hardware.
 */
import { createSampleAttester, type SampleAttester } from '../../attest/index.js';
import { bs, toHex, utf8 } from '../../util/index.js';
import { initDataHash } from '../../wire/index.js';
import { CollectionError, type CpuAttester, type CpuEvidence, padReportData } from './types.js';

export interface InsecureSampleOptions {
  /** The launch measurement the sample reports: 48 bytes (hex); default zeros. */
  measurement?: string;
  /** host_data: at most 32 bytes (hex), e.g. sampleHostData(init-data); default none. */
  hostData?: string;
}

let processKey: Promise<CryptoKeyPair> | undefined;

/** One sample key per process: evidence collected twice names the same "TEE", whatever it reports. */
function sampleKeyForProcess(): Promise<CryptoKeyPair> {
  processKey ??= crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
    'sign',
    'verify',
  ]) as Promise<CryptoKeyPair>;
  return processKey;
}

export class InsecureSampleAttester implements CpuAttester {
  readonly source = 'sample (INSECURE software TEE: a key in this process, no hardware)';
  readonly insecure = true;
  #attester: Promise<SampleAttester> | undefined;

  constructor(private readonly options: InsecureSampleOptions = {}) {}

  async collect(reportData: Uint8Array): Promise<CpuEvidence> {
    // Padded like every hardware TEE's field, so one expected value fits all kinds.
    const rd = padReportData(reportData);
    this.#attester ??= sampleKeyForProcess().then((keyPair) =>
      createSampleAttester({ ...this.options, keyPair }),
    );
    return { kind: 'sample', evidence: await (await this.#attester).attest(rd) };
  }
}

/**
 * The host data a host sets for CoCo init-data: the hash its `algorithm` names over the body exactly
 * as given, cut to the 32 bytes of the field (as a SEV-SNP host does). Only `algorithm` is read here;
 * the broker checks the rest of the document.
 */
export async function sampleHostData(init: { format: 'toml' | 'json'; body: string }): Promise<string> {
  let algorithm: unknown;
  try {
    const doc: unknown =
      init.format === 'toml' ? (await import('smol-toml')).parse(init.body) : JSON.parse(init.body);
    algorithm =
      typeof doc === 'object' && doc !== null ? (doc as { algorithm?: unknown }).algorithm : undefined;
  } catch (e) {
    throw new CollectionError(
      'bad-init-data',
      `init-data is not valid ${init.format.toUpperCase()}: ${(e as Error).message.split('\n')[0]}`,
    );
  }
  const hash = initDataHash(algorithm);
  if (!hash) {
    throw new CollectionError(
      'bad-init-data',
      `init-data algorithm must be sha256, sha384 or sha512, got ${JSON.stringify(algorithm)}`,
    );
  }
  const digest = new Uint8Array(await crypto.subtle.digest(hash, bs(utf8.encode(init.body))));
  return toHex(digest.subarray(0, 32));
}
