/**
 * AMD's X.509 extensions on VCEK and VLEK certificates (AMD "Versioned Chip Endorsement Key (VCEK)
 * Certificate and KDS Interface Specification"): the TCB the key was derived for, the chip it belongs
 * to and the product generation. These bind a certificate to one chip at one TCB level.
 */
import { toHex } from '../../util/index.js';
import type { Certificate } from '../common/pki.js';
import { AttestationError } from '../common/types.js';
import { PRODUCTS, type SnpProduct } from './report.js';

export const OID_STRUCT_VERSION = '1.3.6.1.4.1.3704.1.1';
export const OID_PRODUCT_NAME = '1.3.6.1.4.1.3704.1.2';
export const OID_BL_SPL = '1.3.6.1.4.1.3704.1.3.1';
export const OID_TEE_SPL = '1.3.6.1.4.1.3704.1.3.2';
export const OID_SNP_SPL = '1.3.6.1.4.1.3704.1.3.3';
export const OID_UCODE_SPL = '1.3.6.1.4.1.3704.1.3.8';
export const OID_FMC_SPL = '1.3.6.1.4.1.3704.1.3.9';
export const OID_HWID = '1.3.6.1.4.1.3704.1.4';
export const OID_CSP_ID = '1.3.6.1.4.1.3704.1.5';

export interface EndorsementKeyInfo {
  /** productName as written ("Milan-B0", "Genoa", "Turin"). */
  productName: string;
  product: SnpProduct;
  tcb: { fmc?: number; bootloader: number; tee: number; snp: number; microcode: number };
  /** Chip identifier (VCEK only): 64 bytes for Milan/Genoa, 8 for Turin. */
  hwId?: Uint8Array;
  /** Cloud provider name (VLEK only). */
  cspId?: string;
}

function bad(what: string, message: string): never {
  throw new AttestationError('verify', 'bad-endorsement-certificate', `${what}: ${message}`);
}

function extValue(cert: Certificate, oid: string): Uint8Array | undefined {
  const ext = cert.extensions.find((e) => e.type === oid);
  return ext ? new Uint8Array(ext.value) : undefined;
}

/** One short-form DER TLV with the expected tag(s); the extension value must be exactly that. */
function derPrimitive(v: Uint8Array, tags: number[], what: string, name: string): Uint8Array {
  if (v.length < 2 || !tags.includes(v[0]!) || v[1]! >= 0x80 || v[1]! + 2 !== v.length) {
    bad(what, `extension ${name} is not a well-formed DER value (${toHex(v)})`);
  }
  return v.subarray(2);
}

function derSmallUint(v: Uint8Array, what: string, name: string): number {
  const body = derPrimitive(v, [0x02], what, name);
  if (body.length === 0 || body.length > 2 || body[0]! >= 0x80 || (body.length === 2 && body[0] !== 0)) {
    bad(what, `extension ${name} is not an SPL between 0 and 255 (${toHex(v)})`);
  }
  return body[body.length - 1]!;
}

/** Reads the SNP extensions of a VCEK or VLEK certificate. */
export function readEndorsementKeyInfo(cert: Certificate, what: string): EndorsementKeyInfo {
  const pn = extValue(cert, OID_PRODUCT_NAME);
  if (!pn) bad(what, 'missing productName extension (1.3.6.1.4.1.3704.1.2)');
  const productName = new TextDecoder().decode(derPrimitive(pn, [0x16, 0x0c, 0x13], what, 'productName'));
  const product = PRODUCTS.find((p) => productName === p || productName.startsWith(`${p}-`));
  if (!product) bad(what, `productName "${productName}" is not a supported SEV-SNP product`);
  const spl = (oid: string, name: string): number => {
    const v = extValue(cert, oid);
    if (!v) bad(what, `missing ${name} extension (${oid})`);
    return derSmallUint(v, what, name);
  };
  const tcb: EndorsementKeyInfo['tcb'] = {
    bootloader: spl(OID_BL_SPL, 'blSPL'),
    tee: spl(OID_TEE_SPL, 'teeSPL'),
    snp: spl(OID_SNP_SPL, 'snpSPL'),
    microcode: spl(OID_UCODE_SPL, 'ucodeSPL'),
  };
  if (product === 'Turin') tcb.fmc = spl(OID_FMC_SPL, 'fmcSPL');
  const info: EndorsementKeyInfo = { productName, product, tcb };
  const hw = extValue(cert, OID_HWID);
  if (hw) {
    // KDS writes the chip id as the raw extension value; some issuers wrap it in a DER OCTET STRING
    // (trustee calls these "legacy" and "new"). The lengths differ, so both are read unambiguously.
    const size = product === 'Turin' ? 8 : 64;
    const id = hw.length === size + 2 && hw[0] === 0x04 && hw[1] === size ? hw.subarray(2) : hw;
    if (id.length !== size) bad(what, `hwID is ${hw.length} bytes, ${product} chips have ${size}`);
    info.hwId = id.slice();
  }
  const csp = extValue(cert, OID_CSP_ID);
  if (csp) info.cspId = new TextDecoder().decode(derPrimitive(csp, [0x16, 0x0c, 0x13], what, 'cspId'));
  return info;
}
