import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  AttestationError,
  type KindVerifier,
  type TeeKind,
  type VerifyOptions,
} from '../../src/attest/common/types.js';
import { createVerifierContext, defaultVerifierContext } from '../../src/attest/context.js';
import * as attest from '../../src/attest/index.js';
import { createDefaultRegistry, defaultVerifiers } from '../../src/attest/index.js';
import { detectKind, VerifierRegistry } from '../../src/attest/registry.js';
import { createSampleAttester, sampleVerifier } from '../../src/attest/sample/index.js';
import { fromHex } from '../../src/util/bytes.js';

const V = 'test/vectors';
const vectors: [string, TeeKind][] = [
  ['tdx/dcap-qvl_v4_b0c06f_uptodate/quote.bin', 'tdx'],
  ['tdx/dcap-qvl_v5_90c06f_no-tcb-match/quote.bin', 'tdx'],
  ['tdx/go-tdx-guest_ccel_gce/quote.bin', 'tdx'],
  ['sgx/dcap-qvl_v3_00a067_sw-hardening/quote.bin', 'sgx'],
  ['sgx/trustee_occlum_v3_00606a/quote.bin', 'sgx'],
  ['sev-snp/go-sev-guest_milan_v2/report.bin', 'snp'],
  ['sev-snp/dstack_milan_v3/report.bin', 'snp'],
  ['sev-snp/openpcc_genoa_v3_azure/report.bin', 'snp'],
  ['nvidia-gpu/nvtrust_hopper_545.00_complete/attestation_report.hex', 'nvidia'],
  ['nvidia-gpu/nvat-sdk_blackwell_575.32/attestation_report.hex', 'nvidia'],
  ['nvidia-gpu/nvat-sdk_hopper_590.12_evidence/hopper_evidence.json', 'nvidia'],
  ['azure-vtpm/trustee_az-snp_milan_v1/evidence.json', 'az-snp-vtpm'],
  ['azure-vtpm/trustee_az-snp_genoa/evidence.json', 'az-snp-vtpm'],
  ['azure-vtpm/trustee_az-tdx_v1/evidence.json', 'az-tdx-vtpm'],
  ['azure-vtpm/openpcc_az-snp_genoa/hcl_report.bin', 'az-snp-vtpm'],
  ['azure-vtpm/openpcc_az-tdx/hcl_report.bin', 'az-tdx-vtpm'],
];

describe('detectKind', () => {
  it.each(vectors)('%s is %s', (path, kind) => {
    expect(detectKind(new Uint8Array(readFileSync(`${V}/${path}`)))).toBe(kind);
  });

  it('recognises sample evidence and binary SPDM', async () => {
    expect(detectKind(await (await createSampleAttester()).attest(new Uint8Array(8)))).toBe('sample');
    const hex = readFileSync(`${V}/nvidia-gpu/nvtrust_hopper_545.00_complete/attestation_report.hex`, 'utf8');
    expect(detectKind(fromHex(hex.trim()))).toBe('nvidia');
  });

  it('returns undefined for what it does not know', () => {
    expect(detectKind(new Uint8Array(0))).toBeUndefined();
    expect(detectKind(new Uint8Array(1184).fill(0xff))).toBeUndefined();
    expect(detectKind(new TextEncoder().encode('{"tee":"other"}'))).toBeUndefined();
    expect(detectKind(new TextEncoder().encode('[1,2]'))).toBeUndefined();
    expect(detectKind(new TextEncoder().encode('{not json'))).toBeUndefined();
  });
});

describe('registry', () => {
  it('dispatches by kind and names what is registered when a kind is missing', () => {
    const r = new VerifierRegistry([sampleVerifier]);
    expect(r.get('sample').kind).toBe('sample');
    const e = (() => {
      try {
        r.get('tdx');
      } catch (x) {
        return x;
      }
    })();
    expect(e).toBeInstanceOf(AttestationError);
    expect((e as AttestationError).code).toBe('unsupported-kind');
    expect((e as AttestationError).message).toMatch(/registered: sample/);
  });

  it("passes its context to the verifiers unless the caller's options name another", async () => {
    const seen: VerifyOptions[] = [];
    const probe: KindVerifier = {
      kind: 'sample',
      appraiseEvidence: async (_e, o) => {
        seen.push(o);
        return { kind: 'sample', status: 'none', trustVector: {}, claims: {}, findings: [] };
      },
    };
    const opts = { at: new Date(), collateral: attest.offlineSource };
    const own = createVerifierContext();
    await new VerifierRegistry([probe], { context: own })
      .get('sample')
      .appraiseEvidence(new Uint8Array(), opts);
    await new VerifierRegistry([probe]).get('sample').appraiseEvidence(new Uint8Array(), opts);
    const given = createVerifierContext();
    await new VerifierRegistry([probe], { context: own })
      .get('sample')
      .appraiseEvidence(new Uint8Array(), { ...opts, context: given });
    expect(seen[0]!.context).toBe(own);
    expect(seen[1]!.context).toBe(defaultVerifierContext);
    expect(seen[2]!.context).toBe(given);
    expect(createDefaultRegistry().context).toBe(defaultVerifierContext);
    expect(createDefaultRegistry({ context: own }).context).toBe(own);
  });

  it('has one default registry, holding every shipped verifier, and no process-wide mutable one', () => {
    expect(defaultVerifiers().map((v) => v.kind)).toContain('sample');
    expect(createDefaultRegistry().kinds()).toEqual(defaultVerifiers().map((v) => v.kind));
    expect(new Set(createDefaultRegistry().kinds())).toEqual(
      new Set(['tdx', 'sgx', 'snp', 'az-snp-vtpm', 'az-tdx-vtpm', 'nvidia', 'sample']),
    );
    // An empty global registry used to be the silent default of appraiseComposite, so composite
    // evidence verified without a registry failed with "registered: none".
    for (const name of ['defaultRegistry', 'registerVerifier', 'getVerifier'])
      expect(attest).not.toHaveProperty(name);
    // @ts-expect-error the registry is a required argument: there is no empty default to fall back on.
    const missing: Parameters<typeof attest.appraiseComposite> = [
      { cpu: { evidence: new Uint8Array() }, gpus: [] },
      { at: new Date(), collateral: attest.offlineSource },
    ];
    expect(missing).toHaveLength(2);
  });
});
