/**
 * Attester side of the `sample` TEE: a software key standing in for hardware. The agent uses it for
 * demos on ordinary machines; every verifier marks what it produces as insecure.
 */
import { bs, canonicalizeBytes, fromHex, toBase64Url, toHex } from '../../util/index.js';
import { REPORT_DATA_SIZE } from '../common/types.js';
import { SAMPLE_HOST_DATA_SIZE, type SampleEvidenceBody, type SamplePublicJwk } from './evidence.js';

export interface SampleAttesterOptions {
  /** What the "TEE" reports as its launch measurement (hex or bytes); default 48 zero bytes. */
  measurement?: Uint8Array | string;
  /**
   * What the "host" set at launch (hex or bytes, 32 at most, zero-padded), as a SEV-SNP host sets
   * host_data: the CoCo init-data digest, so init-data checks can be rehearsed. Omitted, the evidence
   * carries no host_data.
   */
  hostData?: Uint8Array | string;
  debug?: boolean;
  /** Reuse a P-256 ECDSA key pair instead of generating one. */
  keyPair?: CryptoKeyPair;
}

export interface SampleAttester {
  readonly publicKey: SamplePublicJwk;
  /** Evidence binding `reportData` (at most 64 bytes), as UTF-8 JSON bytes. */
  attest(reportData: Uint8Array): Promise<Uint8Array>;
}

/** Signs a sample evidence body: ES256 over its RFC 8785 canonical form, added as `signature`. */
export async function signSampleBody(body: object, privateKey: CryptoKey): Promise<Uint8Array> {
  const signature = await crypto.subtle.sign(
    { name: 'ECDSA', hash: 'SHA-256' },
    privateKey,
    bs(canonicalizeBytes(body)),
  );
  return new TextEncoder().encode(
    JSON.stringify({ ...body, signature: toBase64Url(new Uint8Array(signature)) }),
  );
}

function fitHostData(value: Uint8Array | string): string {
  const bytes = typeof value === 'string' ? fromHex(value) : value;
  if (bytes.length > SAMPLE_HOST_DATA_SIZE) {
    throw new RangeError(`sample host data is ${bytes.length} bytes; at most ${SAMPLE_HOST_DATA_SIZE}`);
  }
  const out = new Uint8Array(SAMPLE_HOST_DATA_SIZE);
  out.set(bytes);
  return toHex(out);
}

export async function createSampleAttester(options: SampleAttesterOptions = {}): Promise<SampleAttester> {
  const keyPair =
    options.keyPair ??
    ((await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair);
  const jwk = await crypto.subtle.exportKey('jwk', keyPair.publicKey);
  const publicKey: SamplePublicJwk = { kty: 'EC', crv: 'P-256', x: jwk.x!, y: jwk.y! };
  const m = options.measurement ?? new Uint8Array(48);
  const measurement = typeof m === 'string' ? toHex(fromHex(m)) : toHex(m);
  const debug = options.debug ?? false;
  const hostData = options.hostData === undefined ? undefined : fitHostData(options.hostData);

  return {
    publicKey,
    async attest(reportData: Uint8Array): Promise<Uint8Array> {
      if (reportData.length > REPORT_DATA_SIZE) {
        throw new RangeError(`report data is ${reportData.length} bytes; a sample TEE carries at most 64`);
      }
      const body: SampleEvidenceBody = {
        tee: 'sample',
        report_data: toBase64Url(reportData),
        measurement,
        ...(hostData !== undefined ? { host_data: hostData } : {}),
        debug,
        public_key: publicKey,
      };
      return signSampleBody(body, keyPair.privateKey);
    },
  };
}
