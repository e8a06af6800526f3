import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { AttestationError, type CollateralSource } from '../../../src/attest/common/types.js';
import {
  checkRevocation,
  nvidiaVerifier,
  ocspRequest,
  ocspTargets,
  parseOcspResponse,
} from '../../../src/attest/nvidia/index.js';
import {
  createNvidiaTestAuthority,
  type NvidiaTestAuthority,
  testNonce,
} from '../../../src/attest/testing/nvidia.js';
import { toHex } from '../../../src/util/bytes.js';
import { apply, mutation } from './helpers.js';

let ta: NvidiaTestAuthority;
beforeAll(async () => {
  ta = await createNvidiaTestAuthority('HOPPER');
});

const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));

async function rejection(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

/** GPU chain certificates NVIDIA checks: BROM, provisioner ICA, identity CA (not the leaf, not the root). */
const gpuTargets = () => ocspTargets(ta.certChain, 'GPU attestation-key chain', true);

describe('OCSP (test authority)', () => {
  it('checks exactly the non-leaf, non-root GPU certificates', () => {
    expect(gpuTargets().map((t) => t.cert.subject)).toEqual(ta.certChain.slice(1, -1).map((c) => c.subject));
  });

  it('good responses stapled in the evidence → every GPU certificate checked, no revocation finding', async () => {
    const nonce = testNonce();
    const report = await ta.issueReport({ nonce });
    const ocsp = await Promise.all(gpuTargets().map(async (t) => b64(await ta.ocspResponse(t.cert))));
    const a = await nvidiaVerifier.appraiseEvidence(ta.envelope(report, { ocsp }), {
      at: new Date(),
      collateral: { get: async () => undefined },
      trustAnchors: ta.trustAnchors,
      expectedReportData: nonce,
    });
    expect(a.claims['ocsp_good']).toHaveLength(3);
    expect(a.findings.find((f) => f.check === 'revocation')).toBeUndefined();
  });

  it('responses from the collateral source are found by the listed file name', async () => {
    const nonce = testNonce();
    const report = await ta.issueReport({ nonce });
    const files = new Map<string, Uint8Array>();
    for (const t of gpuTargets()) files.set((await ocspRequest(t)).files[0]!, await ta.ocspResponse(t.cert));
    const seen: string[] = [];
    const collateral: CollateralSource = {
      get: async (req) => {
        seen.push(req.url);
        const f = req.files.find((n) => files.has(n));
        return f ? { body: files.get(f)!, headers: {} } : undefined;
      },
    };
    const a = await nvidiaVerifier.appraiseEvidence(ta.envelope(report), {
      at: new Date(),
      collateral,
      trustAnchors: ta.trustAnchors,
    });
    expect(a.claims['ocsp_good']).toHaveLength(3);
    expect(seen.filter((u) => u.startsWith('https://ocsp.ndis.nvidia.com/'))).toHaveLength(3);
  });

  it('a missing response leaves that certificate unchecked (status none), never good', async () => {
    const [first, ...rest] = gpuTargets();
    const r = await checkRevocation([first!, ...rest], [await ta.ocspResponse(first!.cert)], new Date());
    expect(r.checked).toEqual([first!.cert.subject]);
    expect(r.unchecked).toHaveLength(2);
  });

  it('revoked → certificate-revoked', async () => {
    const t = gpuTargets()[0]!;
    const e = await rejection(
      checkRevocation([t], [await ta.ocspResponse(t.cert, { status: 'revoked' })], new Date()),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'certificate-revoked']);
  });

  it('revoked RIM signer → the whole appraisal is refused', async () => {
    const nonce = testNonce();
    const report = await ta.issueReport({ nonce });
    const vbiosRim = await ta.issueRim({
      version: '96.00.5E.00.01',
      measurements: [{ index: 0, alternatives: [new Uint8Array(48).fill(1)] }],
    });
    const ocsp = [b64(await ta.ocspResponse(ta.rimChain[0]!, { status: 'revoked' }))];
    const e = await rejection(
      nvidiaVerifier.appraiseEvidence(ta.envelope(report, { vbiosRim, ocsp }), {
        at: new Date(),
        collateral: { get: async () => undefined },
        trustAnchors: ta.trustAnchors,
      }),
    );
    expect(e.code).toBe('certificate-revoked');
    expect(e.message).toMatch(/VBIOS RIM signing chain/);
  });

  it('unknown → ocsp-unknown', async () => {
    const t = gpuTargets()[1]!;
    const e = await rejection(
      checkRevocation([t], [await ta.ocspResponse(t.cert, { status: 'unknown' })], new Date()),
    );
    expect(e.code).toBe('ocsp-unknown');
  });

  it('stale (nextUpdate passed) → ocsp-stale', async () => {
    const t = gpuTargets()[0]!;
    const old = await ta.ocspResponse(t.cert, {
      thisUpdate: new Date(Date.now() - 10 * 86_400_000),
      nextUpdate: new Date(Date.now() - 3 * 86_400_000),
    });
    const e = await rejection(checkRevocation([t], [old], new Date()));
    expect(e.code).toBe('ocsp-stale');
  });

  it('signed by a CA that is not the issuer → ocsp-bad-signature', async () => {
    const t = gpuTargets()[0]!; // BROM, issued by the provisioner ICA
    const forged = await ta.ocspResponse(t.cert, { signWithKeyOf: ta.certChain.at(-1)! });
    const e = await rejection(checkRevocation([t], [forged], new Date()));
    expect(e.code).toBe('ocsp-bad-signature');
  });

  it('a flipped byte in the response → refused', async () => {
    const t = gpuTargets()[0]!;
    const der = await ta.ocspResponse(t.cert);
    const bad = der.slice();
    bad[bad.length - 20]! ^= 1;
    const e = await rejection(checkRevocation([t], [bad], new Date()));
    expect(['ocsp-bad-signature', 'bad-ocsp']).toContain(e.code);
  });

  it('garbage is not an OCSP response → bad-ocsp', () => {
    expect(() => parseOcspResponse(new Uint8Array([1, 2, 3]))).toThrow(
      expect.objectContaining({ code: 'bad-ocsp' }),
    );
  });

  it('the request names the certificate by serial number', async () => {
    const t = gpuTargets()[0]!;
    const req = await ocspRequest(t);
    expect(req.files[0]).toBe(`ocsp_${t.cert.serialNumber.toLowerCase().replace(/^0+/, '')}.der`);
    expect(toHex(new TextEncoder().encode(req.url)).length).toBeGreaterThan(0);
  });

  it('a request is built once per certificate and issuer, and differs between certificates', async () => {
    const [a, b] = gpuTargets();
    expect(await ocspRequest(a!)).toBe(await ocspRequest({ ...a! }));
    expect((await ocspRequest(a!)).url).not.toBe((await ocspRequest(b!)).url);
    // Same certificate, another issuer object: its own request (the CertID hashes the issuer).
    expect((await ocspRequest({ ...a!, issuer: b!.issuer })).url).not.toBe((await ocspRequest(a!)).url);
  });

  it('fuzz: a mutated response is refused, ignored as not naming the certificate, or means the same', async () => {
    const t = gpuTargets()[0]!;
    const der = await ta.ocspResponse(t.cert);
    const original = toHex(parseOcspResponse(der).raw);
    await fc.assert(
      fc.asyncProperty(mutation(der.length), async (m) => {
        const bad = apply(der, m);
        const outcome = await checkRevocation([t], [bad], new Date()).then(
          (r) => r,
          (e: unknown) => e,
        );
        if (outcome instanceof Error) {
          expect(outcome).toBeInstanceOf(AttestationError);
          return;
        }
        const r = outcome as { checked: string[] };
        if (r.checked.length > 0) expect(toHex(parseOcspResponse(bad).raw)).toBe(original);
      }),
      { numRuns: 150 },
    );
  });
});
