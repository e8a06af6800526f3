/** Verify stage of the `sample` TEE: the ES256 signature over the JCS body, and the report data. */
import { bs, canonicalizeBytes, equalBytes, sha256, toBase64Url, toHex } from '../../util/index.js';
import { AttestationError, REPORT_DATA_SIZE, type VerifyOptions } from '../common/types.js';
import type { ParsedSampleEvidence, SamplePublicJwk } from './evidence.js';

export interface VerifiedSampleEvidence {
  parsed: ParsedSampleEvidence;
  /** Report data zero-padded to 64 bytes, as hardware TEEs carry it. */
  reportData: Uint8Array;
  /** Whether the caller's expected report data was compared (and matched). */
  reportDataChecked: boolean;
  /** RFC 7638 thumbprint (SHA-256, base64url) of the signing key: the only identity a sample TEE has. */
  keyThumbprint: string;
}

/** Zero-pads report data to the 64-byte field, as every TEE kind does with shorter user data. */
export function padReportData(data: Uint8Array, what: string): Uint8Array {
  if (data.length > REPORT_DATA_SIZE) {
    throw new AttestationError(
      'verify',
      'bad-expected-report-data',
      `${what} is ${data.length} bytes; report data is at most ${REPORT_DATA_SIZE}`,
    );
  }
  const out = new Uint8Array(REPORT_DATA_SIZE);
  out.set(data);
  return out;
}

async function importKey(jwk: SamplePublicJwk): Promise<CryptoKey> {
  try {
    return await crypto.subtle.importKey(
      'jwk',
      { ...jwk, ext: true },
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['verify'],
    );
  } catch (e) {
    // Web Crypto refuses points that are not on the curve here.
    throw new AttestationError('verify', 'bad-public-key', 'sample public_key is not a valid P-256 point', {
      cause: e,
    });
  }
}

async function thumbprint(jwk: SamplePublicJwk): Promise<string> {
  return toBase64Url(await sha256(canonicalizeBytes({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })));
}

export async function verifySampleEvidence(
  parsed: ParsedSampleEvidence,
  options: Pick<VerifyOptions, 'expectedReportData'>,
): Promise<VerifiedSampleEvidence> {
  const key = await importKey(parsed.publicKey);
  const ok = await crypto.subtle.verify(
    { name: 'ECDSA', hash: 'SHA-256' },
    key,
    bs(parsed.signature),
    bs(canonicalizeBytes(parsed.body)),
  );
  if (!ok) {
    throw new AttestationError(
      'verify',
      'bad-signature',
      'sample evidence signature does not verify with its public_key: the evidence was altered after signing',
    );
  }
  const reportData = padReportData(parsed.reportData, 'sample report_data');
  let reportDataChecked = false;
  if (options.expectedReportData !== undefined) {
    const expected = padReportData(options.expectedReportData, 'expected report data');
    if (!equalBytes(expected, reportData)) {
      throw new AttestationError(
        'verify',
        'report-data-mismatch',
        `sample report_data ${toHex(reportData)} is not the expected ${toHex(expected)}: the evidence answers ` +
          'another challenge (replayed or produced for another session)',
      );
    }
    reportDataChecked = true;
  }
  return { parsed, reportData, reportDataChecked, keyThumbprint: await thumbprint(parsed.publicKey) };
}
