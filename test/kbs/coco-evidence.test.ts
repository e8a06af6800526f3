/**
 * An unmodified CoCo guest on real hardware talks to Cloister's broker with guest-components' evidence
 * shapes: the snp attester's `{attestation_report, cert_chain}` (sev's JSON), the tdx attester's
 * `{cc_eventlog, quote}`, and the nvidia attester's `{"nvidia": {"device_evidence_list": […]}}` in
 * additional_evidence, its devices answering the first 32 bytes of SHA-384(JCS({nonce, tee-pubkey})).
 * The messages below are built as rcar_client.rs builds them; evidence comes from the test authorities
 * (so report data can bind a fresh nonce) and, for the shape checks, from the real vectors.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeJwt, flattenedDecrypt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainSources } from '../../src/attest/collateral/index.js';
import { deriveGpuNonce } from '../../src/attest/composite.js';
import { GUID_VCEK } from '../../src/attest/snp/certtable.js';
import { toCocoSnpEvidence } from '../../src/attest/snp/coco.js';
import { createIntelTestAuthority, type IntelTestAuthority } from '../../src/attest/testing/intel.js';
import { createNvidiaTestAuthority, type NvidiaTestAuthority } from '../../src/attest/testing/nvidia.js';
import { SnpTestAuthority } from '../../src/attest/testing/snp.js';
import { toBase64, toHex, utf8 } from '../../src/util/bytes.js';
import {
  deviceEvidence,
  deviceRuntimeDataHash,
  primaryEvidenceBytes,
  primaryRuntimeDataHash,
  reportDataField,
  type TeePubkey,
} from '../../src/wire/kbs.js';
import { type TestBroker, testBroker } from './helpers.js';

const V = join(import.meta.dirname, '../vectors');
const read = (...p: string[]) => new Uint8Array(readFileSync(join(V, ...p)));
const SECRET = 'the model key';
const DAY = 86_400_000;

async function guestKey(): Promise<{ privateKey: CryptoKey; pub: TeePubkey }> {
  const kp = (await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, [
    'deriveBits',
  ])) as CryptoKeyPair;
  const j = await crypto.subtle.exportKey('jwk', kp.publicKey);
  return {
    privateKey: kp.privateKey,
    pub: { kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW', x: j.x!, y: j.y! },
  };
}

/** guest-components' nvidia attester entry (serde of NvDeviceReportAndCert). */
function cocoGpu(gpu: NvidiaTestAuthority, report: Uint8Array, o: { hex?: boolean; arch?: string } = {}) {
  return {
    arch: o.arch ?? 'HOPPER',
    uuid: 'unknown',
    evidence: o.hex ? toHex(report) : toBase64(report),
    certificate: toBase64(utf8.encode(gpu.certChainPem)),
  };
}

interface Guest {
  tee: 'snp' | 'tdx';
  /** guest-components' primary evidence for this report data (64 bytes). */
  primary(reportData: Uint8Array): Promise<unknown>;
  /** The additional_evidence string for this device runtime-data hash (48 bytes), or "". */
  additional?(deviceHash: Uint8Array): Promise<string>;
}

/** rcar_handshake + get_resource as guest-components runs them; returns the HTTP outcome. */
async function run(b: TestBroker, guest: Guest, path = 'owner/models/kek1') {
  const auth = await fetch(new URL('/kbs/v0/auth', b.url), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      version: '0.4.0',
      tee: guest.tee,
      'extra-params': { 'supported-hash-algorithms': ['sha256', 'sha384', 'sha512', 'sm3'] },
    }),
  });
  expect(auth.status).toBe(200);
  const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
  const { nonce } = (await auth.json()) as { nonce: string };
  const key = await guestKey();
  const additional = guest.additional
    ? await guest.additional(await deviceRuntimeDataHash(key.pub, nonce))
    : '';
  const reportData = reportDataField(await primaryRuntimeDataHash(key.pub, nonce, additional));
  const attest = await fetch(new URL('/kbs/v0/attest', b.url), {
    method: 'POST',
    headers: { 'content-type': 'application/json', cookie },
    body: JSON.stringify({
      'runtime-data': { nonce, 'tee-pubkey': key.pub },
      'tee-evidence': { primary_evidence: await guest.primary(reportData), additional_evidence: additional },
    }),
  });
  const body = (await attest.json()) as { token?: string; type?: string; detail?: string };
  if (attest.status !== 200)
    return {
      status: attest.status,
      type: body.type?.replace('https://cloister.dev/problems/', ''),
      detail: body.detail,
    };
  const resource = await fetch(new URL(`/kbs/v0/resource/${path}`, b.url), { headers: { cookie } });
  if (resource.status !== 200) return { status: resource.status, token: body.token };
  const { plaintext } = await flattenedDecrypt(await resource.json(), key.privateKey);
  return { status: 200, token: body.token!, secret: new TextDecoder().decode(plaintext) };
}

describe('a CoCo guest on SEV-SNP (± NVIDIA GPUs) and TDX against the broker', () => {
  let b: TestBroker;
  let snp: SnpTestAuthority;
  let gpu: NvidiaTestAuthority;
  let intel: IntelTestAuthority;
  beforeAll(async () => {
    [snp, gpu, intel] = await Promise.all([
      SnpTestAuthority.create(),
      createNvidiaTestAuthority(),
      createIntelTestAuthority(),
    ]);
    const probe = await snp.issue({});
    const intelCollateral = await intel.collateral({
      issueDate: new Date(Date.now() - DAY),
      nextUpdate: new Date(Date.now() + 30 * DAY),
    });
    b = await testBroker(
      {},
      {
        // The probe's collateral answers ASK/ARK and CRL requests; each guest's VCEK comes in cert_chain.
        collateral: chainSources(snp.collateral(probe), intelCollateral),
        trustAnchors: { snp: [snp.trustAnchor], nvidia: gpu.trustAnchors, tdx: intel.trustAnchors },
      },
    );
    const put = await b.call(
      'PUT',
      '/admin/v1/resources/owner/models/kek1',
      await b.admin(),
      utf8.encode(SECRET),
    );
    expect(put.status).toBe(201);
  });
  afterAll(() => b.close());

  /** guest-components' snp attester: get_ext_report with the host's certificate table. */
  const snpGuest = (
    o: {
      gpus?: number;
      gpuNonce?: (hash: Uint8Array) => Promise<Uint8Array>;
      hex?: boolean;
      arch?: string;
    } = {},
  ): Guest => ({
    tee: 'snp',
    async primary(reportData) {
      const issued = await snp.issue({ reportData });
      return toCocoSnpEvidence(issued.report, [{ guid: GUID_VCEK, data: issued.endorsementKey }]);
    },
    ...(o.gpus
      ? {
          async additional(hash: Uint8Array) {
            // The nvidia attester takes the first 32 bytes of the device runtime-data hash as nonce.
            const nonce = o.gpuNonce ? await o.gpuNonce(hash) : hash.slice(0, 32);
            const list = [];
            for (let i = 0; i < o.gpus!; i++) {
              const report = await gpu.issueReport({ nonce, measurements: gpu.defaultMeasurements() });
              list.push(cocoGpu(gpu, report, o));
            }
            return JSON.stringify({ nvidia: { device_evidence_list: list } });
          },
        }
      : {}),
  });

  it('releases to an SNP guest sending {attestation_report, cert_chain}', async () => {
    const r = await run(b, snpGuest());
    expect(r).toMatchObject({ status: 200, secret: SECRET });
    const claims = decodeJwt(r.token!) as {
      submods: Record<string, { 'ear.veraison.annotated-evidence'?: unknown }>;
    };
    expect(Object.keys(claims.submods)).toEqual(['cpu0']);
  });

  it('releases to an SNP guest with two GPUs in device_evidence_list, bound by the device nonce', async () => {
    const r = await run(b, snpGuest({ gpus: 2 }));
    expect(r).toMatchObject({ status: 200, secret: SECRET });
    const submods = (decodeJwt(r.token!) as { submods: Record<string, unknown> }).submods;
    expect(Object.keys(submods)).toEqual(['cpu0', 'gpu0', 'gpu1']);
  });

  it('accepts hex-encoded GPU evidence (older nvidia attesters), as Trustee does', async () => {
    expect(await run(b, snpGuest({ gpus: 1, hex: true }))).toMatchObject({ status: 200, secret: SECRET });
  });

  it('refuses GPU evidence that answers another session (spliced or replayed)', async () => {
    const r = await run(b, snpGuest({ gpus: 1, gpuNonce: async () => new Uint8Array(32).fill(1) }));
    expect(r).toMatchObject({ status: 403, type: 'attestation-gpu-not-bound' });
    expect(r.detail).toMatch(/first 32 bytes of the binding base/);
  });

  it("refuses GPU evidence answering Cloister's derived nonce in the CoCo shape", async () => {
    // Each shape has one binding: a device_evidence_list answering per-index nonces is not bound.
    const r = await run(b, snpGuest({ gpus: 1, gpuNonce: (h) => deriveGpuNonce(h, 0) }));
    expect(r).toMatchObject({ status: 403, type: 'attestation-gpu-not-bound' });
  });

  it('refuses NVSwitch (LS10) entries with a reason', async () => {
    const r = await run(b, snpGuest({ gpus: 1, arch: 'LS10' }));
    expect(r).toMatchObject({ status: 400, type: 'unsupported-tee' });
    expect(r.detail).toMatch(/NVSwitch \(LS10\)/);
  });

  it('refuses a malformed attestation_report with 400 malformed-evidence', async () => {
    const r = await run(b, {
      tee: 'snp',
      async primary(reportData) {
        const issued = await snp.issue({ reportData });
        const j = toCocoSnpEvidence(issued.report);
        (j.attestation_report as Record<string, unknown>)['report_data'] = 'AAAA';
        return j;
      },
    });
    expect(r).toMatchObject({ status: 400, type: 'malformed-evidence' });
    expect(r.detail).toMatch(/report_data must be an array of 64 byte values/);
  });

  it('refuses a report whose report data does not bind the session', async () => {
    const r = await run(b, {
      tee: 'snp',
      async primary() {
        const issued = await snp.issue({ reportData: new Uint8Array(64).fill(9) });
        return toCocoSnpEvidence(issued.report, [{ guid: GUID_VCEK, data: issued.endorsementKey }]);
      },
    });
    expect(r).toMatchObject({ status: 401, type: 'attestation-report-data-mismatch' });
  });

  it('releases to a TDX guest sending {cc_eventlog, quote}', async () => {
    const ccel = read('tdx', 'go-tdx-guest_ccel_gce', 'ccel_data.bin');
    const guest = (cc_eventlog: unknown): Guest => ({
      tee: 'tdx',
      async primary(reportData) {
        return { cc_eventlog, quote: toBase64(await intel.issueTdxQuote({ reportData })) };
      },
    });
    expect(await run(b, guest(toBase64(ccel)))).toMatchObject({ status: 200, secret: SECRET });
    expect(await run(b, guest(null))).toMatchObject({ status: 200, secret: SECRET });
    expect(await run(b, guest(42))).toMatchObject({ status: 400, type: 'malformed-evidence' });
  });
});

describe('guest-components evidence shapes, field by field', () => {
  it('TDX {cc_eventlog, quote}: the real quote comes out unchanged; the event logs must be null or base64', () => {
    const quote = read('tdx', 'go-tdx-guest_ccel_gce', 'quote.bin');
    const ccel = read('tdx', 'go-tdx-guest_ccel_gce', 'ccel_data.bin');
    const shape = { cc_eventlog: toBase64(ccel), quote: toBase64(quote) };
    expect(primaryEvidenceBytes('tdx', JSON.parse(JSON.stringify(shape))).evidence).toEqual(quote);
    expect(primaryEvidenceBytes('tdx', { cc_eventlog: null, quote: toBase64(quote) }).evidence).toEqual(
      quote,
    );
    expect(
      primaryEvidenceBytes('tdx', { aa_eventlog: toBase64(ccel), quote: toBase64(quote) }).evidence,
    ).toEqual(quote);
    for (const [bad, why] of [
      [{ ...shape, cc_eventlog: 'not base64!' }, /cc_eventlog is not base64/],
      [{ ...shape, cc_eventlog: [1, 2] }, /cc_eventlog must be a base64 string/],
      [{ ...shape, aa_eventlog: 7 }, /aa_eventlog must be a base64 string/],
      [{ cc_eventlog: null }, /quote must be a base64 string/],
    ] as const) {
      expect(() => primaryEvidenceBytes('tdx', bad)).toThrow(
        expect.objectContaining({
          code: 'malformed-evidence',
          message: expect.stringMatching(why),
        }),
      );
    }
  });

  it('SNP: a real report in the CoCo shape comes out byte for byte with its certificate table', () => {
    const report = read('sev-snp', 'virtee_milan_v2', 'report.bin');
    const vcek = read('sev-snp', 'virtee_milan_v2', 'vcek.der');
    const shape = JSON.parse(JSON.stringify(toCocoSnpEvidence(report, [{ guid: GUID_VCEK, data: vcek }])));
    const out = primaryEvidenceBytes('snp', shape);
    expect(out.evidence).toEqual(report);
    expect(out.certTable).toEqual([{ guid: GUID_VCEK, data: vcek }]);
    expect(() => primaryEvidenceBytes('snp', { cert_chain: null })).toThrow(
      /snp evidence must be guest-components'/,
    );
  });

  it('NVIDIA device_evidence_list: each entry becomes one GPU (nonce form coco), real SDK evidence included', () => {
    const sdk = JSON.parse(
      utf8.decode(read('nvidia-gpu', 'nvat-sdk_hopper_590.12_evidence', 'hopper_evidence.json')),
    )[0];
    // The nvidia attester drops the SDK's nonce and adds uuid (default "unknown").
    const entry = { arch: sdk.arch, uuid: 'unknown', evidence: sdk.evidence, certificate: sdk.certificate };
    const parts = deviceEvidence(JSON.stringify({ nvidia: { device_evidence_list: [entry] } }));
    expect(parts).toHaveLength(1);
    expect(parts[0]!.nonce).toBe('coco');
    expect(JSON.parse(utf8.decode(parts[0]!.evidence))).toEqual({
      arch: 'HOPPER',
      evidence: sdk.evidence,
      certificate: sdk.certificate,
    });
    // Hex evidence is re-encoded; the same report either way.
    const hex = toHex(Uint8Array.from(Buffer.from(sdk.evidence, 'base64')));
    const fromHex = deviceEvidence(
      JSON.stringify({ nvidia: { device_evidence_list: [{ ...entry, evidence: hex }] } }),
    );
    expect(fromHex[0]!.evidence).toEqual(parts[0]!.evidence);
    expect(deviceEvidence(JSON.stringify({ nvidia: { gpus: [sdk] } }))[0]!.nonce).toBe('cloister');

    const refused = (v: unknown) => {
      try {
        deviceEvidence(JSON.stringify(v));
      } catch (e) {
        return e as { code: string; message: string };
      }
      throw new Error('accepted');
    };
    const list = (...l: unknown[]) => ({ nvidia: { device_evidence_list: l } });
    expect(refused(list())).toMatchObject({
      code: 'malformed-evidence',
      message: expect.stringMatching(/at least one device/),
    });
    expect(refused({ nvidia: { device_evidence_list: [entry], gpus: [] } })).toMatchObject({
      code: 'malformed-evidence',
    });
    expect(refused(list('x'))).toMatchObject({ message: expect.stringMatching(/must be an object/) });
    expect(refused(list({ ...entry, nonce: 'ab' }))).toMatchObject({
      message: expect.stringMatching(/unknown fields nonce/),
    });
    expect(refused(list({ ...entry, arch: 'AMPERE' }))).toMatchObject({
      message: expect.stringMatching(/arch must be HOPPER, BLACKWELL or LS10/),
    });
    expect(refused(list({ ...entry, arch: 'LS10' }))).toMatchObject({ code: 'unsupported-tee' });
    expect(refused(list({ ...entry, uuid: 3 }))).toMatchObject({
      message: expect.stringMatching(/uuid must be a string/),
    });
    expect(refused(list({ ...entry, evidence: '' }))).toMatchObject({
      message: expect.stringMatching(/evidence must be a hex or base64/),
    });
    expect(refused(list({ ...entry, evidence: '%%%' }))).toMatchObject({
      message: expect.stringMatching(/neither hex nor base64/),
    });
    expect(refused(list({ ...entry, certificate: 5 }))).toMatchObject({
      message: expect.stringMatching(/certificate must be base64/),
    });
    expect(refused(list(entry, { ...entry, uuid: 'GPU-2' }))).toMatchObject({
      message: expect.stringMatching(/repeats an earlier device/),
    });
    expect(refused({ 'nvidia-dpu': {} })).toMatchObject({ code: 'unsupported-tee' });
  });
});
