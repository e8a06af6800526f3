import { describe, expect, it } from 'vitest';
import { pcsCollateral } from '../../../src/attest/intel/pcs.js';
import { tdxVerifier } from '../../../src/attest/tdx/index.js';
import { bs, toHex, utf8 } from '../../../src/util/bytes.js';
import { V4_UPTODATE, vector } from './vectors.js';

/** Intel PCS as a fake fetch, built from the dcap-qvl collateral.json: JSON bodies, chains in headers. */
function fakePcs(hexRootCrl: boolean) {
  const c = JSON.parse(utf8.decode(vector(`${V4_UPTODATE}/collateral.json`))) as Record<string, string>;
  const seen: string[] = [];
  const routes: Record<string, { body: string | Uint8Array; headers: Record<string, string> }> = {
    '/tdx/certification/v4/tcb?fmspc=b0c06f000000': {
      body: `{"tcbInfo":${c['tcb_info']},"signature":"${c['tcb_info_signature']}"}`,
      headers: { 'TCB-Info-Issuer-Chain': encodeURIComponent(c['tcb_info_issuer_chain']!) },
    },
    '/tdx/certification/v4/qe/identity': {
      body: `{"enclaveIdentity":${c['qe_identity']},"signature":"${c['qe_identity_signature']}"}`,
      headers: { 'SGX-Enclave-Identity-Issuer-Chain': encodeURIComponent(c['qe_identity_issuer_chain']!) },
    },
    '/sgx/certification/v4/pckcrl?ca=platform&encoding=der': {
      body: Uint8Array.from(c['pck_crl']!.match(/../g)!.map((h) => Number.parseInt(h, 16))),
      headers: { 'SGX-PCK-CRL-Issuer-Chain': encodeURIComponent(c['pck_crl_issuer_chain']!) },
    },
  };
  const rootCrl = Uint8Array.from(c['root_ca_crl']!.match(/../g)!.map((h) => Number.parseInt(h, 16)));
  const fetch = async (input: string | URL | Request) => {
    const url = String(input);
    seen.push(url);
    const u = new URL(url);
    if (u.pathname === '/IntelSGXRootCA.der' || u.pathname.endsWith('/rootcacrl')) {
      return new Response(hexRootCrl ? toHex(rootCrl) : rootCrl);
    }
    const r = routes[u.pathname + u.search];
    return r
      ? new Response(typeof r.body === 'string' ? r.body : bs(r.body), { headers: r.headers })
      : new Response('', { status: 404 });
  };
  return { fetch: fetch as typeof globalThis.fetch, seen };
}

describe('pcsCollateral', () => {
  const quote = vector(`${V4_UPTODATE}/quote.bin`);
  const at = new Date('2025-07-01T00:00:00Z');

  it('verifies with Intel PCS responses (issuer chains in headers)', async () => {
    const pcs = fakePcs(false);
    const a = await tdxVerifier.appraiseEvidence(quote, {
      at,
      collateral: pcsCollateral({ fetch: pcs.fetch }),
    });
    expect(a.status).toBe('affirming');
    expect(pcs.seen).toContain(
      'https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=b0c06f000000',
    );
    expect(pcs.seen).toContain('https://certificates.trustedservices.intel.com/IntelSGXRootCA.der');
  });

  it('verifies through a PCCS base URL, whose root CA CRL is hex text', async () => {
    const pcs = fakePcs(true);
    const collateral = pcsCollateral({ fetch: pcs.fetch, baseUrl: 'https://pccs.example:8081/' });
    const a = await tdxVerifier.appraiseEvidence(quote, { at, collateral });
    expect(a.status).toBe('affirming');
    expect(
      pcs.seen.every(
        (u) =>
          u.startsWith('https://pccs.example:8081/sgx/') || u.startsWith('https://pccs.example:8081/tdx/'),
      ),
    ).toBe(true);
    expect(pcs.seen).toContain('https://pccs.example:8081/sgx/certification/v4/rootcacrl');
  });

  it('treats 404 as missing and other failures as unavailable', async () => {
    const notFound = pcsCollateral({
      fetch: (async () => new Response('', { status: 404 })) as typeof fetch,
    });
    await expect(
      notFound.get({ url: 'https://api.trustedservices.intel.com/x', files: [] }),
    ).resolves.toBeUndefined();
    const broken = pcsCollateral({ fetch: (async () => new Response('', { status: 503 })) as typeof fetch });
    await expect(broken.get({ url: 'https://api.trustedservices.intel.com/x', files: [] })).rejects.toThrow(
      /HTTP 503/,
    );
  });
});
