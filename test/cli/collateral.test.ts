/**
 * `cloister collateral fetch` against local stand-ins for Intel PCS (as a PCCS), AMD KDS and the NVIDIA
 * RIM service, serving the repository's vectors: the folder it writes verifies the same evidence
 * offline (`cloister verify --collateral`), evidence brings the collateral its verifier asks for, and
 * every missing item and unreachable vendor is one line and exit 1, a bad flag exit 64.
 */
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VendorSourceOptions } from '../../src/attest/index.js';
import { type CollateralFetchOptions, runCollateralFetch } from '../../src/cli/collateral.js';
import { runVerify } from '../../src/cli/verify.js';
import { fromHex } from '../../src/util/bytes.js';

const V = 'test/vectors';
const TDX = `${V}/tdx/dcap-qvl_v4_b0c06f_uptodate`;
const SNP = `${V}/sev-snp/virtee_milan_v2`;
const RIM = 'NV_GPU_DRIVER_GH100_550.144.03';
const read = (p: string) => readFileSync(p);

/** One server for the three vendors: /pcs (PCCS paths), /kds, /rim; every request is remembered. */
function vendors(): { server: Server; seen: string[] } {
  const c = JSON.parse(readFileSync(`${TDX}/collateral.json`, 'utf8')) as Record<string, string>;
  const crl = Buffer.from(fromHex(c.pck_crl!));
  const routes: Record<string, { body: string | Buffer; headers?: Record<string, string> }> = {
    '/pcs/tdx/certification/v4/tcb?fmspc=b0c06f000000': {
      body: `{"tcbInfo":${c.tcb_info},"signature":"${c.tcb_info_signature}"}`,
      headers: { 'TCB-Info-Issuer-Chain': encodeURIComponent(c.tcb_info_issuer_chain!) },
    },
    '/pcs/tdx/certification/v4/qe/identity': {
      body: `{"enclaveIdentity":${c.qe_identity},"signature":"${c.qe_identity_signature}"}`,
      headers: { 'SGX-Enclave-Identity-Issuer-Chain': encodeURIComponent(c.qe_identity_issuer_chain!) },
    },
    '/pcs/sgx/certification/v4/pckcrl?ca=platform&encoding=der': {
      body: crl,
      headers: { 'SGX-PCK-CRL-Issuer-Chain': encodeURIComponent(c.pck_crl_issuer_chain!) },
    },
    '/pcs/sgx/certification/v4/pckcrl?ca=processor&encoding=der': { body: crl },
    '/pcs/sgx/certification/v4/rootcacrl': { body: c.root_ca_crl! },
    '/kds/vcek/v1/Milan/crl': { body: read(`${V}/roots/amd_ark_milan_crl.der`) },
    '/kds/vcek/v1/Milan/cert_chain': {
      body: Buffer.concat([read(`${V}/roots/amd_ask_milan.pem`), read(`${V}/roots/amd_ark_milan.pem`)]),
    },
    [`/rim/${RIM}`]: {
      body: JSON.stringify({ id: RIM, rim: read(`${V}/nvidia-gpu/rims/${RIM}.xml`).toString('base64') }),
    },
  };
  const seen: string[] = [];
  const server = createServer((req, res) => {
    const url = req.url ?? '';
    seen.push(url);
    // Any VCEK of the Milan vector's chip, whatever TCB the query names.
    const r =
      url.startsWith('/kds/vcek/v1/Milan/') && url.includes('?')
        ? { body: read(`${SNP}/vcek.der`) }
        : routes[url];
    if (!r) {
      res.writeHead(url.startsWith('/broken') ? 503 : 404).end();
      return;
    }
    res.writeHead(200, r.headers ?? {}).end(r.body);
  });
  return { server, seen };
}

let base: string;
let fake: ReturnType<typeof vendors>;
beforeAll(async () => {
  fake = vendors();
  await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(fake.server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => fake.server.close(() => resolve())));

const options = (more: Partial<CollateralFetchOptions>): CollateralFetchOptions => ({
  out: mkdtempSync(path.join(tmpdir(), 'cloister-collateral-')),
  evidence: [],
  fmspc: [],
  product: [],
  nvidiaRim: [],
  ...more,
});

async function capture<T>(run: (io: { out(s: string): void; err(s: string): void }) => Promise<T>) {
  let out = '';
  let err = '';
  const code = await run({
    out(s) {
      out += s;
    },
    err(s) {
      err += s;
    },
  });
  return { code, out, err };
}

const fetchInto = (o: CollateralFetchOptions, v: VendorSourceOptions = {}) =>
  capture((io) =>
    runCollateralFetch(o, io, {
      intelPcsUrl: `${base}/pcs`,
      amdKdsUrl: `${base}/kds`,
      nvidiaRimUrl: `${base}/rim`,
      ...v,
    }),
  );

/** Verifies `evidence` copied alone into a fresh folder, so only `collateral` can serve it. */
async function verifyOffline(evidence: string, collateral: string, at: string) {
  const alone = mkdtempSync(path.join(tmpdir(), 'cloister-evidence-'));
  const file = path.join(alone, path.basename(evidence));
  copyFileSync(evidence, file);
  const r = await capture((io) => runVerify(file, { collateral, at, json: true }, io));
  return { ...r, doc: r.out ? JSON.parse(r.out) : undefined };
}

describe('cloister collateral fetch', () => {
  it('--tee tdx --fmspc writes the layout the verifier reads offline, issuer chains beside their items', async () => {
    const o = options({ tee: 'tdx', fmspc: ['B0C06F000000'] });
    const r = await fetchInto(o);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(readdirSync(o.out).sort()).toEqual([
      'pck_crl_platform.der',
      'pck_crl_platform.der.headers.json',
      'pck_crl_processor.der',
      'root_ca_crl.der',
      'tdx_qe_identity.json',
      'tdx_qe_identity.json.headers.json',
      'tdx_tcb_info_b0c06f000000.json',
      'tdx_tcb_info_b0c06f000000.json.headers.json',
    ]);
    expect(r.out).toContain(
      `${o.out} now holds: Intel PCS: TCB info for 1 FMSPC (1 TDX), QE identity (TDX), 2 PCK CRLs, root CA CRL;`,
    );
    expect(fake.seen).toContain('/pcs/tdx/certification/v4/tcb?fmspc=b0c06f000000');
    const v = await verifyOffline(`${TDX}/quote.bin`, o.out, '2025-07-01T00:00:00Z');
    expect([v.code, v.doc.status]).toEqual([0, 'affirming']);
  });

  it('--evidence: an SNP report brings its chip VCEK, the CRL and chain, and then verifies offline', async () => {
    const o = options({ evidence: [`${SNP}/report.bin`] });
    const r = await fetchInto(o);
    expect(r.code).toBe(0);
    const files = readdirSync(o.out);
    expect(files.filter((f) => /^vcek_[0-9a-f]{128}_[0-9a-f]{16}\.der$/.test(f))).toHaveLength(1);
    expect(files).toEqual(expect.arrayContaining(['amd_ark_milan_crl.der']));
    expect(r.out).toMatch(/AMD KDS: 1 VCEK, 1 CRL/);
    const v = await verifyOffline(`${SNP}/report.bin`, o.out, '2025-12-01T00:00:00Z');
    expect(v.err).toBe('');
    expect(v.doc.claims.revocation_checked).toBe(true);
  });

  it('--nvidia-rim writes the RIM XML unwrapped from the service JSON', async () => {
    const o = options({ nvidiaRim: [RIM] });
    const r = await fetchInto(o);
    expect(r.code).toBe(0);
    expect(readFileSync(path.join(o.out, `${RIM}.xml`))).toEqual(read(`${V}/nvidia-gpu/rims/${RIM}.xml`));
    expect(r.out).toMatch(/NVIDIA RIMs: 1/);
  });

  it('names each item the vendor does not have, and an unreachable vendor, with exit 1', async () => {
    const o = options({ tee: 'sgx', fmspc: ['000000000000'] });
    const r = await fetchInto(o);
    expect(r.code).toBe(1);
    expect(r.err).toContain(
      `${base}/pcs/sgx/certification/v4/tcb?fmspc=000000000000`.replace(
        `${base}/pcs`,
        'https://api.trustedservices.intel.com',
      ),
    );
    expect(r.err).toMatch(/Intel PCS has no such item/);
    const down = await fetchInto(options({ nvidiaRim: [RIM] }), { nvidiaRimUrl: `${base}/broken` });
    expect(down.code).toBe(1);
    expect(down.err).toMatch(
      /^cloister collateral fetch: https:\/\/rim\.attestation\.nvidia\.com\/v1\/rim\/NV_GPU_DRIVER_GH100_550\.144\.03: .*HTTP 503/m,
    );
  });

  it('refuses bad or missing flags with one line naming the flag', async () => {
    const cases: [Partial<CollateralFetchOptions>, string][] = [
      [{}, 'nothing to fetch'],
      [{ fmspc: ['b0c06f000000'] }, '--fmspc names an Intel platform'],
      [{ tee: 'tdx', fmspc: ['b0c06f'] }, '--fmspc b0c06f is not 6 bytes of hex'],
      [{ tee: 'tdx' }, '--tee tdx needs --fmspc HEX'],
      [{ tee: 'snp' }, '--tee snp needs --product'],
      [{ tee: 'tdx', product: ['milan'] }, '--product names an AMD SEV-SNP product, not a --tee tdx'],
      [{ product: ['naples'] }, '--product naples is not milan, genoa or turin'],
      [{ nvidiaRim: ['../x'] }, '--nvidia-rim ../x is not a RIM id'],
      [{ evidence: ['/nonexistent/quote.bin'] }, '/nonexistent/quote.bin: cannot read evidence'],
    ];
    for (const [more, message] of cases) {
      const o = options(more);
      const r = await fetchInto(o);
      expect([r.code, r.err.trim().split('\n').length], message).toEqual([64, 1]);
      expect(r.err).toContain(message);
      expect(existsSync(path.join(o.out, 'tdx_qe_identity.json'))).toBe(false);
    }
  });
});
