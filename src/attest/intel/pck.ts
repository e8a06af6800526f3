/**
 * The Intel SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1): the platform's FMSPC,
 * PCE-ID, the TCB it was certified at (16 SGX TCB component SVNs, PCESVN, CPUSVN) and the PPID.
 * TCB matching uses these values, never the quote header's, because the PCK certificate is what
 * Intel signed for this platform.
 */
import type { Certificate } from '../common/pki.js';
import { AttestationError } from '../common/types.js';
import { DerError, derChildren, derSingle, derUint, expectTag, oidText, TAG } from './der.js';

export const SGX_EXTENSION_OID = '1.2.840.113741.1.13.1';

export interface PckTcb {
  /** SGX TCB component SVNs 1..16 (index 0 = component 1). */
  components: number[];
  pcesvn: number;
  cpusvn: Uint8Array;
}

export interface PckExtensions {
  ppid: Uint8Array;
  tcb: PckTcb;
  pceId: Uint8Array;
  fmspc: Uint8Array;
  /** 0 standard, 1 scalable, 2 scalable with integrity. */
  sgxType: number;
  /** Platform CA certificates only. */
  platformInstanceId?: Uint8Array;
  configuration?: { dynamicPlatform?: boolean; cachedKeys?: boolean; smtEnabled?: boolean };
}

const fixed = (v: Uint8Array, n: number, what: string): Uint8Array => {
  if (v.length !== n) throw new DerError(`${what} is ${v.length} bytes, expected ${n}`);
  return v;
};

function parseTcb(value: Uint8Array): PckTcb {
  const components: (number | undefined)[] = new Array(16).fill(undefined);
  let pcesvn: number | undefined;
  let cpusvn: Uint8Array | undefined;
  for (const item of derChildren(value)) {
    const [oidEl, valEl] = derChildren(expectTag(item, TAG.SEQUENCE, 'TCB entry'));
    if (!oidEl || !valEl) throw new DerError('TCB entry needs an OID and a value');
    const oid = oidText(expectTag(oidEl, TAG.OID, 'TCB entry OID'));
    const arc = oid.startsWith(`${SGX_EXTENSION_OID}.2.`)
      ? Number(oid.slice(SGX_EXTENSION_OID.length + 3))
      : NaN;
    if (arc >= 1 && arc <= 16) {
      components[arc - 1] = derUint(
        expectTag(valEl, TAG.INTEGER, `TCB component ${arc}`),
        `TCB component ${arc}`,
      );
    } else if (arc === 17) {
      pcesvn = derUint(expectTag(valEl, TAG.INTEGER, 'PCESVN'), 'PCESVN');
    } else if (arc === 18) {
      cpusvn = fixed(expectTag(valEl, TAG.OCTET_STRING, 'CPUSVN'), 16, 'CPUSVN');
    }
  }
  const missing = components.indexOf(undefined);
  if (missing >= 0) throw new DerError(`TCB component ${missing + 1} is missing`);
  if (pcesvn === undefined) throw new DerError('PCESVN is missing');
  if (cpusvn === undefined) throw new DerError('CPUSVN is missing');
  return { components: components as number[], pcesvn, cpusvn };
}

/** Reads the SGX extension of a PCK certificate; a missing or malformed extension is a parse error. */
export function parsePckExtensions(cert: Certificate): PckExtensions {
  const ext = cert.extensions.find((e) => e.type === SGX_EXTENSION_OID);
  if (!ext) {
    throw new AttestationError(
      'parse',
      'bad-pck-extension',
      `PCK certificate "${cert.subject}" has no Intel SGX extension (${SGX_EXTENSION_OID})`,
    );
  }
  try {
    const seq = expectTag(derSingle(new Uint8Array(ext.value)), TAG.SEQUENCE, 'SGX extension');
    const out: Partial<PckExtensions> = {};
    const seen = new Set<string>();
    for (const item of derChildren(seq)) {
      const [oidEl, valEl, ...rest] = derChildren(expectTag(item, TAG.SEQUENCE, 'SGX extension entry'));
      if (!oidEl || !valEl || rest.length)
        throw new DerError('SGX extension entry needs an OID and one value');
      const oid = oidText(expectTag(oidEl, TAG.OID, 'SGX extension entry OID'));
      if (seen.has(oid)) throw new DerError(`SGX extension entry ${oid} appears twice`);
      seen.add(oid);
      switch (oid.slice(SGX_EXTENSION_OID.length + 1)) {
        case '1':
          out.ppid = fixed(expectTag(valEl, TAG.OCTET_STRING, 'PPID'), 16, 'PPID');
          break;
        case '2':
          out.tcb = parseTcb(expectTag(valEl, TAG.SEQUENCE, 'TCB'));
          break;
        case '3':
          out.pceId = fixed(expectTag(valEl, TAG.OCTET_STRING, 'PCE-ID'), 2, 'PCE-ID');
          break;
        case '4':
          out.fmspc = fixed(expectTag(valEl, TAG.OCTET_STRING, 'FMSPC'), 6, 'FMSPC');
          break;
        case '5':
          out.sgxType = derUint(expectTag(valEl, TAG.ENUMERATED, 'SGX type'), 'SGX type');
          break;
        case '6':
          out.platformInstanceId = expectTag(valEl, TAG.OCTET_STRING, 'platform instance ID');
          break;
        case '7': {
          const conf: NonNullable<PckExtensions['configuration']> = {};
          for (const c of derChildren(expectTag(valEl, TAG.SEQUENCE, 'configuration'))) {
            const [o, v] = derChildren(expectTag(c, TAG.SEQUENCE, 'configuration entry'));
            if (!o || !v) throw new DerError('configuration entry needs an OID and a value');
            const flag = expectTag(v, TAG.BOOLEAN, 'configuration flag')[0] !== 0;
            const which = oidText(expectTag(o, TAG.OID, 'configuration OID')).slice(
              SGX_EXTENSION_OID.length + 3,
            );
            if (which === '1') conf.dynamicPlatform = flag;
            else if (which === '2') conf.cachedKeys = flag;
            else if (which === '3') conf.smtEnabled = flag;
          }
          out.configuration = conf;
          break;
        }
        default:
          // Later Intel profiles may add entries; unknown ones carry nothing this verifier judges.
          break;
      }
    }
    for (const need of ['ppid', 'tcb', 'pceId', 'fmspc', 'sgxType'] as const) {
      if (out[need] === undefined) throw new DerError(`entry ${need} is missing`);
    }
    return out as PckExtensions;
  } catch (e) {
    if (e instanceof AttestationError) throw e;
    throw new AttestationError(
      'parse',
      'bad-pck-extension',
      `PCK certificate "${cert.subject}": malformed Intel SGX extension: ${(e as Error).message}`,
      { cause: e },
    );
  }
}
