import { describe, expect, it } from 'vitest';
import type { CollateralItem } from '../../../src/attest/common/types.js';
import {
  fetchCollateral,
  parseQeIdentity,
  parseTcbInfo,
  pckCrlRequest,
  qeIdentityRequest,
  rootCaCrlRequest,
  tcbInfoRequest,
} from '../../../src/attest/intel/collateral.js';
import { topLevelSpans } from '../../../src/attest/intel/json.js';
import { sgxVerifier } from '../../../src/attest/sgx/index.js';
import { toHex, utf8 } from '../../../src/util/bytes.js';
import { collateralFrom, GO_TDX, rejects, V4_UPTODATE, vector } from './vectors.js';

describe('signed JSON spans', () => {
  it('returns each member exactly as written, whitespace and key order included', () => {
    const text = '{ "tcbInfo" : {"b":1, "a":[1,{"x":"}"}]} ,"signature":"ab"}';
    const spans = topLevelSpans(utf8.encode(text));
    expect(utf8.decode(spans.get('tcbInfo')!)).toBe('{"b":1, "a":[1,{"x":"}"}]}');
    expect(utf8.decode(spans.get('signature')!)).toBe('"ab"');
  });

  it('refuses a repeated member and text that is not JSON', () => {
    expect(() => topLevelSpans(utf8.encode('{"tcbInfo":{},"tcbInfo":{"x":1}}'))).toThrow(/twice/);
    expect(() => topLevelSpans(utf8.encode('{"tcbInfo":{}'))).toThrow();
  });
});

describe('collateral requests', () => {
  it('name Intel PCS v4 URLs and the offline file names of test/vectors', () => {
    expect(tcbInfoRequest('tdx', 'b0c06f000000')).toEqual({
      url: 'https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=b0c06f000000',
      files: [
        'tdx_tcb_info_b0c06f000000.json',
        'tcb_info_b0c06f000000.json',
        'tcb_info.json',
        'collateral.json',
      ],
    });
    expect(qeIdentityRequest('sgx').url).toBe(
      'https://api.trustedservices.intel.com/sgx/certification/v4/qe/identity',
    );
    expect(pckCrlRequest('processor').url).toBe(
      'https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=processor&encoding=der',
    );
    expect(rootCaCrlRequest().url).toBe('https://certificates.trustedservices.intel.com/IntelSGXRootCA.der');
  });

  it('read the same collateral from a collateral.json bundle and from PCS-style responses', async () => {
    const bundle = await fetchCollateral(collateralFrom(V4_UPTODATE), 'tdx', 'b0c06f000000', 'platform');
    const raw = JSON.parse(utf8.decode(vector(`${V4_UPTODATE}/collateral.json`))) as Record<string, string>;
    expect(utf8.decode(bundle.tcbInfo.signed)).toBe(raw['tcb_info']);
    expect(toHex(bundle.tcbInfo.signature)).toBe(raw['tcb_info_signature']);
    expect(toHex(bundle.pckCrl)).toBe(raw['pck_crl']);

    // The same items served as Intel PCS serves them: JSON envelope, URL-encoded chains in headers.
    const responses = new Map<string, CollateralItem>([
      [
        tcbInfoRequest('tdx', 'b0c06f000000').url,
        {
          body: utf8.encode(`{"tcbInfo":${raw['tcb_info']},"signature":"${raw['tcb_info_signature']}"}`),
          headers: { 'tcb-info-issuer-chain': encodeURIComponent(raw['tcb_info_issuer_chain']!) },
        },
      ],
      [
        qeIdentityRequest('tdx').url,
        {
          body: utf8.encode(
            `{"enclaveIdentity":${raw['qe_identity']},"signature":"${raw['qe_identity_signature']}"}`,
          ),
          headers: {
            'sgx-enclave-identity-issuer-chain': encodeURIComponent(raw['qe_identity_issuer_chain']!),
          },
        },
      ],
      [pckCrlRequest('platform').url, { body: bundle.pckCrl, headers: {} }],
      [rootCaCrlRequest().url, { body: bundle.rootCaCrl, headers: {} }],
    ]);
    const pcs = await fetchCollateral(
      { get: async (r) => responses.get(r.url) },
      'tdx',
      'b0c06f000000',
      'platform',
    );
    expect(pcs.tcbInfo.signed).toEqual(bundle.tcbInfo.signed);
    expect(pcs.qeIdentity.chainPem).toBe(bundle.qeIdentity.chainPem);
  });

  it('takes issuer chains from *_issuer_chain.pem files when there are no headers', async () => {
    const c = await fetchCollateral(collateralFrom(GO_TDX), 'tdx', '50806f000000', 'platform');
    expect(c.tcbInfo.chainPem).toContain('BEGIN CERTIFICATE');
    expect(c.qeIdentity.chainPem).toBe(c.tcbInfo.chainPem);
  });

  it('reports the first missing item', async () => {
    const e = await rejects(
      fetchCollateral({ get: async () => undefined }, 'sgx', '00606a000000', 'platform'),
      'verify',
      'collateral-missing',
    );
    expect(e.message).toMatch(/SGX TCB info for FMSPC 00606a000000/);
  });
});

describe('TCB info and QE identity', () => {
  const tcb = JSON.parse(utf8.decode(vector(`${GO_TDX}/tcb_info.json`))) as {
    tcbInfo: Record<string, unknown>;
  };

  it('parses TDX TCB info v3 and orders levels as Intel does (highest first)', () => {
    const info = parseTcbInfo(utf8.encode(JSON.stringify(tcb.tcbInfo)));
    expect(info).toMatchObject({ id: 'TDX', version: 3, tcbEvaluationDataNumber: 15 });
    expect(toHex(info.fmspc)).toBe('50806f000000');
    expect(info.tcbLevels).toHaveLength(2);
    const reversed = { ...tcb.tcbInfo, tcbLevels: [...(tcb.tcbInfo['tcbLevels'] as unknown[])].reverse() };
    expect(parseTcbInfo(utf8.encode(JSON.stringify(reversed))).tcbLevels).toEqual(info.tcbLevels);
  });

  it('refuses unsupported versions, unknown statuses and wrong component counts', async () => {
    const bad = (patch: Record<string, unknown>) => utf8.encode(JSON.stringify({ ...tcb.tcbInfo, ...patch }));
    await rejects(() => parseTcbInfo(bad({ version: 2 })), 'verify', 'unsupported-collateral');
    await rejects(() => parseTcbInfo(bad({ tcbType: 1 })), 'verify', 'unsupported-collateral');
    const levels = tcb.tcbInfo['tcbLevels'] as Record<string, unknown>[];
    await rejects(
      () => parseTcbInfo(bad({ tcbLevels: [{ ...levels[0], tcbStatus: 'Fine' }] })),
      'verify',
      'bad-collateral',
    );
    const short = { ...levels[0], tcb: { ...(levels[0]!['tcb'] as object), sgxtcbcomponents: [{ svn: 1 }] } };
    await rejects(() => parseTcbInfo(bad({ tcbLevels: [short] })), 'verify', 'bad-collateral');
    await rejects(() => parseTcbInfo(bad({ fmspc: '50806f' })), 'verify', 'bad-collateral');
    await rejects(() => parseTcbInfo(bad({ nextUpdate: 'tomorrow' })), 'verify', 'bad-collateral');
  });

  it('parses QE identity v2', () => {
    const qe = JSON.parse(utf8.decode(vector(`${GO_TDX}/qe_identity.json`))) as { enclaveIdentity: unknown };
    const id = parseQeIdentity(utf8.encode(JSON.stringify(qe.enclaveIdentity)));
    expect(id).toMatchObject({ id: 'TD_QE', version: 2, isvprodid: 2 });
    expect(id.tcbLevels).toEqual([
      { isvsvn: 4, tcbDate: '2023-02-15T00:00:00Z', tcbStatus: 'UpToDate', advisoryIds: [] },
    ]);
  });
});

describe('CRLs must be exactly the bytes their issuer signed (fuzzing regression)', () => {
  it('a root CA CRL with an altered unsigned outer field is refused', async () => {
    const bundle = vector('sgx/dcap-qvl_v3_00a067_sw-hardening/collateral.json');
    bundle[2433]! ^= 1;
    await rejects(
      sgxVerifier.appraiseEvidence(vector('sgx/dcap-qvl_v3_00a067_sw-hardening/quote.bin'), {
        at: new Date('2025-07-01T00:00:00Z'),
        collateral: { get: async () => ({ body: bundle, headers: {} }) },
      }),
      'verify',
      'bad-crl',
    );
  });
});
