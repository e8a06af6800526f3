/**
 * The certificate table an extended guest request (SNP_GET_EXT_REPORT, or configfs-tsm's
 * `auxblob`) returns beside the report (GHCB specification, "SNP Extended Guest Request"): entries of
 * {GUID, offset, length} ending with an all-zero entry, offsets relative to the table start. It lets a
 * guest ship its VCEK/VLEK (and ASK, ARK, CRL) with the evidence, so no KDS round trip is needed.
 */
import { ByteReader, isAllZero, ParseError, toHex, utf8 } from '../../util/index.js';
import { parseCertificates } from '../common/pki.js';
import { AttestationError, type CollateralSource } from '../common/types.js';

export const GUID_VCEK = '63da758d-e664-4564-adc5-f4b93be8accd';
export const GUID_VLEK = 'a8074bc2-a25a-483e-aae6-39c045a0b8a1';
export const GUID_ASK = '4ab7b379-bbac-4fe4-a02f-05aef327c782';
export const GUID_ARK = 'c0b406a4-a803-4952-9743-3fb6014cd0ae';
export const GUID_CRL = '92f81bc3-5811-4d3d-97ff-d19f88dc67ea';

export interface CertTableEntry {
  /** Lower-case GUID text; the binary GUID is in RFC 4122 (big-endian) byte order. */
  guid: string;
  data: Uint8Array;
}

function guidText(b: Uint8Array): string {
  const h = toHex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function parseCertTable(table: Uint8Array): CertTableEntry[] {
  const r = new ByteReader(table, 'SEV-SNP certificate table');
  const headers: { guid: string; offset: number; length: number }[] = [];
  try {
    for (;;) {
      const guid = r.bytesOf(16, `entry[${headers.length}].guid`);
      const offset = r.u32le(`entry[${headers.length}].offset`);
      const length = r.u32le(`entry[${headers.length}].length`);
      if (isAllZero(guid) && offset === 0 && length === 0) break;
      headers.push({ guid: guidText(guid), offset, length });
    }
  } catch (e) {
    if (e instanceof ParseError) {
      throw new AttestationError('parse', 'bad-cert-table', `${e.message} (no terminating all-zero entry)`);
    }
    throw e;
  }
  const headerEnd = r.offset;
  return headers.map((h, i) => {
    if (h.offset < headerEnd || h.offset + h.length > table.length || h.length === 0) {
      throw new AttestationError(
        'parse',
        'bad-cert-table',
        `certificate table entry ${i} (${h.guid}) points at bytes ${h.offset}..${h.offset + h.length}, outside ${headerEnd}..${table.length}`,
      );
    }
    return { guid: h.guid, data: table.slice(h.offset, h.offset + h.length) };
  });
}

function pemOf(der: Uint8Array): string {
  return parseCertificates(der, 'certificate table entry')[0]!.toString('pem');
}

/**
 * A CollateralSource answering the SNP verifier's requests from a certificate table: the VCEK/VLEK,
 * the ASK+ARK as cert_chain and the CRL; anything else (or anything absent) goes to `fallback`.
 * Entries are only candidates: they are trusted after the chain to a trust anchor verifies.
 */
export function certTableCollateral(
  table: Uint8Array | CertTableEntry[],
  fallback?: CollateralSource,
): CollateralSource {
  const entries = table instanceof Uint8Array ? parseCertTable(table) : table;
  const find = (guid: string) => entries.find((e) => e.guid === guid)?.data;
  return {
    async get(req) {
      let body: Uint8Array | undefined;
      if (req.files.includes('vcek.der')) body = find(GUID_VCEK);
      else if (req.files.includes('vlek.der')) body = find(GUID_VLEK);
      else if (req.files.includes('crl.der') || req.files.includes('vlek_crl.der')) body = find(GUID_CRL);
      else if (req.files.includes('cert_chain.pem') || req.files.includes('vlek_cert_chain.pem')) {
        const certs = [find(GUID_ASK), find(GUID_ARK)].filter((c): c is Uint8Array => c !== undefined);
        if (certs.length > 0) body = utf8.encode(certs.map(pemOf).join('\n'));
      }
      if (body) return { body, headers: {} };
      return fallback?.get(req);
    },
  };
}
