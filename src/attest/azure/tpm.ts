/**
 * TPM 2.0 quotes from the Azure vTPM (TPM 2.0 Library Part 2: TPMS_ATTEST, TPMS_QUOTE_INFO,
 * TPML_PCR_SELECTION; all integers big-endian). The quote is signed by the vTPM attestation key (AK),
 * whose public key the HCL report's runtime data carries.
 */
import { ByteReader, bs, concatBytes, equalBytes, ParseError, toHex } from '../../util/index.js';
import { AttestationError, type AttestationErrorCode } from '../common/types.js';

const TPM_GENERATED_VALUE = 0xff544347;
const TPM_ST_ATTEST_QUOTE = 0x8018;
const TPM_ALG_SHA256 = 0x000b;

export interface PcrSelection {
  hashAlg: number;
  pcrs: number[];
}

export interface TpmQuoteInfo {
  qualifiedSigner: Uint8Array;
  /** Qualifying data: the verifier's nonce. */
  extraData: Uint8Array;
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
  firmwareVersion: bigint;
  selections: PcrSelection[];
  pcrDigest: Uint8Array;
}

function fail(stage: 'parse' | 'verify', code: AttestationErrorCode, message: string): never {
  throw new AttestationError(stage, code, `vTPM quote: ${message}`);
}

/** Parses a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE; anything after the structure is an error. */
export function parseTpmQuote(message: Uint8Array): TpmQuoteInfo {
  const r = new ByteReader(message, 'TPMS_ATTEST');
  try {
    if (r.u32be('magic') !== TPM_GENERATED_VALUE) fail('parse', 'bad-magic', 'not TPM_GENERATED_VALUE');
    const type = r.u16be('type');
    if (type !== TPM_ST_ATTEST_QUOTE)
      fail('parse', 'not-a-quote', `type 0x${type.toString(16)} is not a quote (0x8018)`);
    const qualifiedSigner = r.bytesOf(r.u16be('qualifiedSigner.size'), 'qualifiedSigner');
    const extraData = r.bytesOf(r.u16be('extraData.size'), 'extraData');
    const clock = r.u64be('clockInfo.clock');
    const resetCount = r.u32be('clockInfo.resetCount');
    const restartCount = r.u32be('clockInfo.restartCount');
    const safe = r.u8('clockInfo.safe') !== 0;
    const firmwareVersion = r.u64be('firmwareVersion');
    const count = r.u32be('pcrSelect.count');
    if (count > 16) fail('parse', 'bad-pcr-selection', `${count} PCR banks selected`);
    const selections: PcrSelection[] = [];
    for (let i = 0; i < count; i++) {
      const hashAlg = r.u16be(`pcrSelect[${i}].hash`);
      const bitmap = r.bytesOf(r.u8(`pcrSelect[${i}].sizeofSelect`), `pcrSelect[${i}].pcrSelect`);
      const pcrs: number[] = [];
      bitmap.forEach((byte, j) => {
        for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) pcrs.push(8 * j + bit);
      });
      selections.push({ hashAlg, pcrs });
    }
    const pcrDigest = r.bytesOf(r.u16be('pcrDigest.size'), 'pcrDigest');
    r.end();
    return {
      qualifiedSigner: qualifiedSigner.slice(),
      extraData: extraData.slice(),
      clock,
      resetCount,
      restartCount,
      safe,
      firmwareVersion,
      selections,
      pcrDigest: pcrDigest.slice(),
    };
  } catch (e) {
    if (e instanceof ParseError)
      fail('parse', e.field === 'trailing' ? 'trailing-bytes' : 'truncated', e.message);
    throw e;
  }
}

/**
 * Checks the AK's RSASSA-PKCS1-v1_5/SHA-256 signature over the TPMS_ATTEST bytes, then that the
 * quoted PCR digest is SHA-256 over the supplied SHA-256 PCR values in selection order. Returns the
 * quoted PCR values by index.
 */
export async function verifyTpmQuote(
  message: Uint8Array,
  signature: Uint8Array,
  quote: TpmQuoteInfo,
  ak: JsonWebKey,
  pcrValues: Uint8Array[],
): Promise<Map<number, Uint8Array>> {
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey('jwk', ak, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, [
      'verify',
    ]);
  } catch (e) {
    fail('verify', 'bad-ak', `the HCLAkPub key cannot be used: ${(e as Error).message}`);
  }
  const ok = await crypto.subtle.verify('RSASSA-PKCS1-v1_5', key, bs(signature), bs(message));
  if (!ok) fail('verify', 'bad-signature', 'the quote signature does not verify with HCLAkPub');
  const [sel, ...more] = quote.selections;
  if (!sel || more.length > 0 || sel.hashAlg !== TPM_ALG_SHA256) {
    fail('verify', 'unsupported-pcr-selection', 'only a single SHA-256 PCR bank selection is supported');
  }
  const quoted = new Map<number, Uint8Array>();
  for (const i of sel.pcrs) {
    const v = pcrValues[i];
    if (v?.length !== 32)
      fail('verify', 'pcr-missing', `PCR ${i} is quoted but no 32-byte value was supplied`);
    quoted.set(i, v);
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bs(concatBytes(...quoted.values()))));
  if (!equalBytes(digest, quote.pcrDigest)) {
    fail(
      'verify',
      'pcr-digest-mismatch',
      `the supplied PCR values hash to ${toHex(digest)}, the quote signed ${toHex(quote.pcrDigest)}`,
    );
  }
  return quoted;
}
