/**
 * The Azure vTPM evidence document. Cloister accepts the JSON that Confidential Containers' attester
 * produces (and its older variants), with byte strings as hex (TPM fields), base64/base64url (reports,
 * DER certificates), PEM text, or arrays of byte values:
 *   { "hcl_report" | "report", "tpm_quote" | "quote": { "message", "signature", "pcrs": [...] },
 *     "vcek"?, "td_quote"? }
 * A bare binary HCL report (starting with "HCLA") is accepted as well; it carries no TPM quote.
 */
import { fromBase64, fromHex, utf8 } from '../../util/index.js';
import { AttestationError } from '../common/types.js';

export interface AzureEvidence {
  hclReport: Uint8Array;
  tpmQuote?: { message: Uint8Array; signature: Uint8Array; pcrs: Uint8Array[] };
  /** VCEK as DER or PEM bytes (Azure serves it from its THIM cache; the evidence may carry it). */
  vcek?: Uint8Array;
  /** TDX quote (az-tdx-vtpm). */
  tdQuote?: Uint8Array;
}

function fail(message: string): never {
  throw new AttestationError('parse', 'bad-evidence', `Azure vTPM evidence: ${message}`);
}

type Encoding = 'hex' | 'base64';

function bytesOf(v: unknown, what: string, enc: Encoding): Uint8Array {
  if (Array.isArray(v)) {
    if (!v.every((x) => Number.isInteger(x) && x >= 0 && x <= 255)) fail(`${what} is not an array of bytes`);
    return new Uint8Array(v as number[]);
  }
  if (typeof v !== 'string') fail(`${what} is missing or not a string / byte array`);
  try {
    return enc === 'hex' ? fromHex(v) : fromBase64(v);
  } catch {
    fail(`${what} is not ${enc}`);
  }
}

export function parseAzureEvidence(input: Uint8Array): AzureEvidence {
  if (input.length >= 4 && utf8.decode(input.subarray(0, 4)) === 'HCLA') return { hclReport: input.slice() };
  let doc: unknown;
  try {
    doc = JSON.parse(utf8.decode(input));
  } catch (e) {
    fail(`neither a binary HCL report nor JSON (${(e as Error).message})`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) fail('not a JSON object');
  const d = doc as Record<string, unknown>;
  const out: AzureEvidence = { hclReport: bytesOf(d['hcl_report'] ?? d['report'], 'hcl_report', 'base64') };
  const q = d['tpm_quote'] ?? d['quote'];
  if (q !== undefined) {
    if (!q || typeof q !== 'object') fail('tpm_quote is not an object');
    const qq = q as Record<string, unknown>;
    const pcrs = qq['pcrs'];
    if (!Array.isArray(pcrs) || pcrs.length > 24)
      fail('tpm_quote.pcrs is not a list of at most 24 PCR values');
    out.tpmQuote = {
      message: bytesOf(qq['message'], 'tpm_quote.message', 'hex'),
      signature: bytesOf(qq['signature'], 'tpm_quote.signature', 'hex'),
      pcrs: pcrs.map((p, i) => bytesOf(p, `tpm_quote.pcrs[${i}]`, 'hex')),
    };
  }
  const vcek = d['vcek'];
  if (vcek !== undefined) {
    out.vcek =
      typeof vcek === 'string' && vcek.includes('-----BEGIN')
        ? utf8.encode(vcek)
        : bytesOf(vcek, 'vcek', 'base64');
  }
  if (d['td_quote'] !== undefined) out.tdQuote = bytesOf(d['td_quote'], 'td_quote', 'base64');
  return out;
}
