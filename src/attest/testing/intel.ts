/**
 * TEST AUTHORITY for Intel DCAP — never use outside tests. It plays Intel: a generated root CA, a PCK
 * Platform CA, a PCK certificate with the SGX extension, a TCB signing certificate; it issues TDX
 * (v4/v5) and SGX (v3) quotes in the real binary format, signed the real way (attestation key, QE
 * report signed by the PCK key, QE report data binding), and the matching collateral (TCB info, QE
 * identity, CRLs) as Intel PCS responses or as a dcap-qvl bundle. Verification then runs the
 * production code paths with options.trustAnchors = authority.trustAnchors.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { bs, concatBytes, sha256, toHex, utf8 } from '../../util/index.js';
import type { CollateralSource } from '../common/types.js';
import type { TcbLevelStatus } from '../intel/collateral.js';
import {
  PCS_BASE,
  pckCrlRequest,
  qeIdentityRequest,
  rootCaCrlRequest,
  tcbInfoRequest,
} from '../intel/collateral.js';
import { SGX_EXTENSION_OID } from '../intel/pck.js';
import { INTEL_QE_VENDOR_ID, TEE_TYPE_SGX, TEE_TYPE_TDX } from '../intel/quote.js';

/** A time inside the default validity of everything the authority issues. */
export const INTEL_TEST_TIME = new Date('2026-01-15T00:00:00Z');
const DEFAULT_ISSUE = new Date('2026-01-01T00:00:00Z');
const DEFAULT_NEXT = new Date('2026-02-01T00:00:00Z');

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export const TEST_FMSPC = '00906ed50000';
export const TEST_PCE_ID = '0000';
/** The platform's SGX TCB components and PCESVN as certified in the PCK certificate. */
const PCK_COMPONENTS = [4, 4, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0];
const PCK_PCESVN = 11;
const TEST_QE_MRSIGNER = new Uint8Array(32).fill(0x5a);

// ---- DER for the SGX extension --------------------------------------------------------------------

function tlv(tag: number, content: Uint8Array): Uint8Array {
  const n = content.length;
  const len = n < 128 ? [n] : n < 256 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return concatBytes(new Uint8Array([tag, ...len]), content);
}
const seq = (...items: Uint8Array[]) => tlv(0x30, concatBytes(...items));
const oid = (suffix: string) => {
  const base = [0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];
  return tlv(0x06, new Uint8Array([...base, ...suffix.split('.').map(Number)]));
};
const int = (v: number) => tlv(0x02, new Uint8Array(v >= 128 ? [0, v] : [v]));
const octets = (b: Uint8Array) => tlv(0x04, b);

function sgxExtension(ppid: Uint8Array, fmspc: string, components: number[], pcesvn: number): Uint8Array {
  const tcb = seq(
    ...components.map((c, i) => seq(oid(`2.${i + 1}`), int(c))),
    seq(oid('2.17'), int(pcesvn)),
    seq(oid('2.18'), octets(new Uint8Array(components))),
  );
  return seq(
    seq(oid('1'), octets(ppid)),
    seq(oid('2'), tcb),
    seq(oid('3'), octets(hex(TEST_PCE_ID))),
    seq(oid('4'), octets(hex(fmspc))),
    seq(oid('5'), tlv(0x0a, new Uint8Array([1]))),
  );
}

function hex(s: string): Uint8Array {
  return new Uint8Array(s.match(/../g)!.map((b) => Number.parseInt(b, 16)));
}

// ---- the authority ------------------------------------------------------------------------------

interface Party {
  keys: CryptoKeyPair;
  cert: x509.X509Certificate;
}

export interface TdxQuoteOptions {
  /** 4 (TD 1.0 body) or 5 (TD 1.5 body). Default 4. */
  version?: 4 | 5;
  mrTd?: Uint8Array;
  rtmr?: Uint8Array[];
  mrConfigId?: Uint8Array;
  mrOwner?: Uint8Array;
  reportData?: Uint8Array;
  debug?: boolean;
  /** TD_ATTRIBUTES; default SEPT_VE_DISABLE (plus DEBUG when `debug`). */
  tdAttributes?: Uint8Array;
  /** v5 only: MRSERVICETD; default zero. */
  mrServiceTd?: Uint8Array;
  /** Default 03 01 02 00…: TDX module major version 1, ISVSVN 3. */
  teeTcbSvn?: Uint8Array;
  /** v5 only: TEE_TCB_SVN2 (the module after a TD-preserving update); default = teeTcbSvn. */
  teeTcbSvn2?: Uint8Array;
  /** QE ISVSVN; default 4. */
  qeSvn?: number;
}

export interface SgxQuoteOptions {
  /** 3 (default), 4, or 5 (typed body, type 1). */
  version?: 3 | 4 | 5;
  mrEnclave?: Uint8Array;
  mrSigner?: Uint8Array;
  isvProdId?: number;
  isvSvn?: number;
  reportData?: Uint8Array;
  debug?: boolean;
  qeSvn?: number;
}

export interface CollateralOptions {
  issueDate?: Date;
  nextUpdate?: Date;
  /** Status of the TCB level the platform's PCK TCB matches (a higher UpToDate level is listed above it). */
  tcbStatus?: TcbLevelStatus;
  advisoryIds?: string[];
  /** Status of the TDX module level for ISVSVN ≥ 3 (TDX_01). */
  tdxModuleStatus?: TcbLevelStatus;
  /** Lowest QE ISVSVN that is UpToDate (lower ones are OutOfDate). Default 4. */
  qeUpToDateSvn?: number;
  /** List the PCK certificate's serial in the PCK CRL. */
  revokePck?: boolean;
  /** 'pcs' (default): PCS responses by URL with issuer chains in headers; 'bundle': one dcap-qvl collateral.json. */
  layout?: 'pcs' | 'bundle';
}

export interface IntelTestAuthority {
  /** The generated root, DER: pass as options.trustAnchors. */
  trustAnchors: Uint8Array[];
  rootPem: string;
  pckSerial: string;
  issueTdxQuote(options?: TdxQuoteOptions): Promise<Uint8Array>;
  issueSgxQuote(options?: SgxQuoteOptions): Promise<Uint8Array>;
  collateral(options?: CollateralOptions): Promise<CollateralSource>;
}

const NOT_BEFORE = new Date('2020-01-01T00:00:00Z');
const NOT_AFTER = new Date('2040-01-01T00:00:00Z');

async function keyPair(): Promise<CryptoKeyPair> {
  return (await crypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function issue(
  subject: string,
  issuer: Party | 'self',
  keys: CryptoKeyPair,
  extensions: x509.Extension[],
  serialNumber: string,
): Promise<x509.X509Certificate> {
  return x509.X509CertificateGenerator.create({
    serialNumber,
    subject,
    issuer: issuer === 'self' ? subject : issuer.cert.subject,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
    signingAlgorithm: SIGN,
    publicKey: keys.publicKey,
    signingKey: issuer === 'self' ? keys.privateKey : issuer.keys.privateKey,
    extensions,
  });
}

const pem = (c: x509.X509Certificate) => c.toString('pem');

function u16(v: number): Uint8Array {
  return new Uint8Array([v & 0xff, v >> 8]);
}
function u32(v: number): Uint8Array {
  return new Uint8Array([v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff]);
}
function pad(b: Uint8Array | undefined, n: number): Uint8Array {
  const out = new Uint8Array(n);
  if (b) out.set(b.subarray(0, n));
  return out;
}

function enclaveReport(o: {
  attributes: Uint8Array;
  mrEnclave: Uint8Array;
  mrSigner: Uint8Array;
  isvProdId: number;
  isvSvn: number;
  reportData: Uint8Array;
}): Uint8Array {
  return concatBytes(
    new Uint8Array(PCK_COMPONENTS),
    new Uint8Array(4),
    new Uint8Array(28),
    pad(o.attributes, 16),
    pad(o.mrEnclave, 32),
    new Uint8Array(32),
    pad(o.mrSigner, 32),
    new Uint8Array(96),
    u16(o.isvProdId),
    u16(o.isvSvn),
    new Uint8Array(44),
    new Uint8Array(16),
    pad(o.reportData, 64),
  );
}

async function sign(key: CryptoKey, data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign(SIGN, key, bs(data)));
}

export async function createIntelTestAuthority(): Promise<IntelTestAuthority> {
  const rootKeys = await keyPair();
  const caExt = (pathLen?: number) => [
    new x509.BasicConstraintsExtension(true, pathLen, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ];
  const root: Party = {
    keys: rootKeys,
    cert: await issue('CN=Cloister TEST SGX Root CA, O=Cloister Test', 'self', rootKeys, caExt(1), '01'),
  };
  const pcaKeys = await keyPair();
  const pca: Party = {
    keys: pcaKeys,
    cert: await issue('CN=Cloister TEST SGX PCK Platform CA, O=Cloister Test', root, pcaKeys, caExt(0), '02'),
  };
  const signingKeys = await keyPair();
  const tcbSigning: Party = {
    keys: signingKeys,
    cert: await issue('CN=Cloister TEST SGX TCB Signing, O=Cloister Test', root, signingKeys, [], '03'),
  };
  const pckKeys = await keyPair();
  const pckSerial = '1234abcd';
  const pck: Party = {
    keys: pckKeys,
    cert: await issue(
      'CN=Cloister TEST SGX PCK Certificate, O=Cloister Test',
      pca,
      pckKeys,
      [
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.nonRepudiation,
          true,
        ),
        new x509.Extension(
          SGX_EXTENSION_OID,
          false,
          bs(sgxExtension(new Uint8Array(16).fill(7), TEST_FMSPC, PCK_COMPONENTS, PCK_PCESVN)),
        ),
      ],
      pckSerial,
    ),
  };
  const akKeys = await keyPair();
  const ak = new Uint8Array(await crypto.subtle.exportKey('raw', akKeys.publicKey)).subarray(1);
  const pckChainPem = utf8.encode(`${pem(pck.cert)}\n${pem(pca.cert)}\n${pem(root.cert)}\n\0`);

  async function quote(
    version: number,
    teeType: number,
    body: Uint8Array,
    tdx: boolean,
    qeSvn: number,
  ): Promise<Uint8Array> {
    const header = concatBytes(
      u16(version),
      u16(2),
      u32(teeType),
      u16(0),
      u16(0),
      hex(INTEL_QE_VENDOR_ID),
      new Uint8Array(20),
    );
    const signed = concatBytes(header, body);
    const authData = new Uint8Array(32).map((_, i) => i);
    const qeReport = enclaveReport({
      attributes: hex('11000000000000000000000000000000'),
      mrEnclave: new Uint8Array(32).fill(0x33),
      mrSigner: TEST_QE_MRSIGNER,
      isvProdId: tdx ? 2 : 1,
      isvSvn: qeSvn,
      reportData: await sha256(concatBytes(ak, authData)),
    });
    const qeCert = concatBytes(
      qeReport,
      await sign(pck.keys.privateKey, qeReport),
      u16(authData.length),
      authData,
      u16(5),
      u32(pckChainPem.length),
      pckChainPem,
    );
    const certData = version >= 4 ? concatBytes(u16(6), u32(qeCert.length), qeCert) : qeCert;
    const sigData = concatBytes(await sign(akKeys.privateKey, signed), ak, certData);
    return concatBytes(signed, u32(sigData.length), sigData);
  }

  return {
    trustAnchors: [new Uint8Array(root.cert.rawData)],
    rootPem: pem(root.cert),
    pckSerial,

    async issueTdxQuote(o: TdxQuoteOptions = {}) {
      const version = o.version ?? 4;
      const teeTcbSvn = o.teeTcbSvn ?? new Uint8Array([3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      const attrs = o.tdAttributes ? pad(o.tdAttributes, 8) : new Uint8Array(8);
      if (!o.tdAttributes) attrs[3] = 0x10; // SEPT_VE_DISABLE
      if (o.debug) attrs[0]! |= 1;
      const rtmr = [0, 1, 2, 3].map((i) => pad(o.rtmr?.[i], 48));
      const td = concatBytes(
        teeTcbSvn,
        new Uint8Array(48).fill(0x11),
        new Uint8Array(48),
        new Uint8Array(8),
        attrs,
        hex('e702060000000000'),
        pad(o.mrTd ?? new Uint8Array(48).fill(0x22), 48),
        pad(o.mrConfigId, 48),
        pad(o.mrOwner, 48),
        new Uint8Array(48),
        ...rtmr,
        pad(o.reportData, 64),
        ...(version === 5 ? [o.teeTcbSvn2 ?? teeTcbSvn, pad(o.mrServiceTd, 48)] : []),
      );
      const body = version === 5 ? concatBytes(u16(3), u32(td.length), td) : td;
      return quote(version, TEE_TYPE_TDX, body, true, o.qeSvn ?? 4);
    },

    async issueSgxQuote(o: SgxQuoteOptions = {}) {
      const attributes = new Uint8Array(16);
      attributes[0] = 0x05 | (o.debug ? 0x02 : 0); // INIT | MODE64BIT (| DEBUG)
      attributes[8] = 0x03;
      const body = enclaveReport({
        attributes,
        mrEnclave: o.mrEnclave ?? new Uint8Array(32).fill(0x44),
        mrSigner: o.mrSigner ?? new Uint8Array(32).fill(0x55),
        isvProdId: o.isvProdId ?? 0,
        isvSvn: o.isvSvn ?? 0,
        reportData: o.reportData ?? new Uint8Array(64),
      });
      const version = o.version ?? 3;
      const typed = version === 5 ? concatBytes(u16(1), u32(body.length), body) : body;
      return quote(version, TEE_TYPE_SGX, typed, false, o.qeSvn ?? 4);
    },

    async collateral(o: CollateralOptions = {}) {
      const issueDate = (o.issueDate ?? DEFAULT_ISSUE).toISOString().replace('.000Z', 'Z');
      const nextUpdate = (o.nextUpdate ?? DEFAULT_NEXT).toISOString().replace('.000Z', 'Z');
      const status = o.tcbStatus ?? 'UpToDate';
      const comps = (svns: number[]) => svns.map((svn) => ({ svn }));
      const higher = PCK_COMPONENTS.map((c, i) => (i < 2 ? c + 1 : c));
      const tdxComps = [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
      const level = (sgx: number[], s: TcbLevelStatus, advisoryIds: string[], tdx: boolean) => ({
        tcb: {
          sgxtcbcomponents: comps(sgx),
          pcesvn: PCK_PCESVN,
          ...(tdx ? { tdxtcbcomponents: comps(tdxComps) } : {}),
        },
        tcbDate: '2025-11-12T00:00:00Z',
        tcbStatus: s,
        ...(advisoryIds.length ? { advisoryIDs: advisoryIds } : {}),
      });
      const levels = (tdx: boolean) => [
        ...(status === 'UpToDate' ? [] : [level(higher, 'UpToDate', [], tdx)]),
        level(PCK_COMPONENTS, status, o.advisoryIds ?? [], tdx),
      ];
      const tcbInfo = (tdx: boolean) =>
        JSON.stringify({
          id: tdx ? 'TDX' : 'SGX',
          version: 3,
          issueDate,
          nextUpdate,
          fmspc: TEST_FMSPC.toUpperCase(),
          pceId: TEST_PCE_ID,
          tcbType: 0,
          tcbEvaluationDataNumber: 19,
          ...(tdx
            ? {
                tdxModule: {
                  mrsigner: '00'.repeat(48),
                  attributes: '00'.repeat(8),
                  attributesMask: 'FF'.repeat(8),
                },
                tdxModuleIdentities: [
                  {
                    id: 'TDX_01',
                    mrsigner: '00'.repeat(48),
                    attributes: '00'.repeat(8),
                    attributesMask: 'FF'.repeat(8),
                    tcbLevels: [
                      {
                        tcb: { isvsvn: 3 },
                        tcbDate: '2025-11-12T00:00:00Z',
                        tcbStatus: o.tdxModuleStatus ?? 'UpToDate',
                      },
                      { tcb: { isvsvn: 1 }, tcbDate: '2024-01-01T00:00:00Z', tcbStatus: 'OutOfDate' },
                    ],
                  },
                ],
              }
            : {}),
          tcbLevels: levels(tdx),
        });
      const qeIdentity = (tdx: boolean) =>
        JSON.stringify({
          id: tdx ? 'TD_QE' : 'QE',
          version: 2,
          issueDate,
          nextUpdate,
          tcbEvaluationDataNumber: 19,
          miscselect: '00000000',
          miscselectMask: 'FFFFFFFF',
          attributes: '11000000000000000000000000000000',
          attributesMask: 'FBFFFFFFFFFFFFFF0000000000000000',
          mrsigner: toHex(TEST_QE_MRSIGNER).toUpperCase(),
          isvprodid: tdx ? 2 : 1,
          tcbLevels: [
            { tcb: { isvsvn: o.qeUpToDateSvn ?? 4 }, tcbDate: '2025-11-12T00:00:00Z', tcbStatus: 'UpToDate' },
            {
              tcb: { isvsvn: 0 },
              tcbDate: '2020-01-01T00:00:00Z',
              tcbStatus: 'OutOfDate',
              advisoryIDs: ['INTEL-SA-00999'],
            },
          ],
        });
      const signJson = async (s: string) => toHex(await sign(tcbSigning.keys.privateKey, utf8.encode(s)));
      const crl = async (issuer: Party, serials: string[], thisUpdate: Date, nextUpdate: Date) =>
        new Uint8Array(
          (
            await x509.X509CrlGenerator.create({
              issuer: issuer.cert.subject,
              thisUpdate,
              nextUpdate,
              entries: serials.map((serialNumber) => ({ serialNumber, revocationDate: new Date(issueDate) })),
              signingKey: issuer.keys.privateKey,
              signingAlgorithm: SIGN,
            })
          ).rawData,
        );
      const signingChain = `${pem(tcbSigning.cert)}\n${pem(root.cert)}\n`;
      const day = 86400_000;
      const issued = new Date(issueDate);
      const pckCrl = await crl(
        pca,
        o.revokePck ? ['0abc', pckSerial] : ['0abc'],
        issued,
        new Date(nextUpdate),
      );
      // Like Intel's, the root CA CRL is reissued yearly (and so issued well before), the rest monthly.
      const rootCrl = await crl(
        root,
        [],
        new Date(issued.getTime() - 90 * day),
        new Date(issued.getTime() + 365 * day),
      );

      const responses = new Map<string, { body: Uint8Array; headers: Record<string, string> }>();
      for (const tee of ['tdx', 'sgx'] as const) {
        const info = tcbInfo(tee === 'tdx');
        const qe = qeIdentity(tee === 'tdx');
        if (o.layout === 'bundle') {
          // A bundle answers for one TEE kind; the authority keeps one per kind under the kind's URLs.
          const bundle = utf8.encode(
            JSON.stringify({
              pck_crl_issuer_chain: `${pem(pca.cert)}\n${pem(root.cert)}\n`,
              root_ca_crl: toHex(rootCrl),
              pck_crl: toHex(pckCrl),
              tcb_info_issuer_chain: signingChain,
              tcb_info: info,
              tcb_info_signature: await signJson(info),
              qe_identity_issuer_chain: signingChain,
              qe_identity: qe,
              qe_identity_signature: await signJson(qe),
            }),
          );
          responses.set(`${tee}:bundle`, { body: bundle, headers: {} });
          continue;
        }
        responses.set(tcbInfoRequest(tee, TEST_FMSPC).url, {
          body: utf8.encode(`{"tcbInfo":${info},"signature":"${await signJson(info)}"}`),
          headers: { 'tcb-info-issuer-chain': encodeURIComponent(signingChain) },
        });
        responses.set(qeIdentityRequest(tee).url, {
          body: utf8.encode(`{"enclaveIdentity":${qe},"signature":"${await signJson(qe)}"}`),
          headers: { 'sgx-enclave-identity-issuer-chain': encodeURIComponent(signingChain) },
        });
      }
      responses.set(pckCrlRequest('platform').url, {
        body: pckCrl,
        headers: { 'sgx-pck-crl-issuer-chain': encodeURIComponent(`${pem(pca.cert)}\n${pem(root.cert)}\n`) },
      });
      responses.set(rootCaCrlRequest().url, { body: rootCrl, headers: {} });
      return {
        async get(req) {
          if (o.layout === 'bundle') {
            // Like a folder holding only collateral.json: the kind is read from the request URL.
            if (!req.files.includes('collateral.json')) return undefined;
            const tee = req.url.startsWith(`${PCS_BASE}/sgx/`) && !req.url.includes('pckcrl') ? 'sgx' : 'tdx';
            return responses.get(`${tee}:bundle`);
          }
          return responses.get(req.url);
        },
      };
    },
  };
}
