import { describe, expect, it } from 'vitest';
import {
  type Appraisal,
  AttestationError,
  type KindVerifier,
  type VerifyOptions,
} from '../../src/attest/common/types.js';
import {
  appraiseComposite,
  decodeCompositeEvidence,
  deriveGpuNonce,
  encodeCompositeEvidence,
  GPU_NONCE_LABEL,
  isCompositeEvidence,
} from '../../src/attest/composite.js';
import { VerifierRegistry } from '../../src/attest/registry.js';
import { createSampleAttester, sampleVerifier } from '../../src/attest/sample/index.js';
import { concatBytes, equalBytes, fromHex, sha256, toHex, utf8 } from '../../src/util/bytes.js';

/**
 * A stand-in GPU: evidence is 0x11 0xE0, a 32-byte nonce, a status byte (0 = fine, 1 = warning) and a
 * "MAC" byte (xor of everything before it) standing in for the SPDM signature.
 */
const fakeGpu: KindVerifier = {
  kind: 'nvidia',
  async appraiseEvidence(evidence: Uint8Array, options: VerifyOptions): Promise<Appraisal> {
    if (evidence.length !== 36 || evidence[0] !== 0x11 || evidence[1] !== 0xe0) {
      throw new AttestationError('parse', 'bad-structure', 'not a fake GPU report');
    }
    if (evidence.subarray(0, 35).reduce((a, b) => a ^ b, 0) !== evidence[35]) {
      throw new AttestationError('verify', 'bad-signature', 'fake GPU signature does not verify');
    }
    const nonce = evidence.subarray(2, 34);
    if (options.expectedReportData && !equalBytes(options.expectedReportData, nonce)) {
      throw new AttestationError('verify', 'nonce-mismatch', 'GPU nonce is not the expected one');
    }
    const warn = evidence[34] === 1;
    return {
      kind: 'nvidia',
      status: warn ? 'warning' : 'affirming',
      trustVector: { hardware: warn ? 32 : 2 },
      claims: { nonce: toHex(nonce) },
      findings: warn ? [{ check: 'driver', status: 'warning', message: 'old driver' }] : [],
    };
  },
};

function fakeGpuEvidence(nonce: Uint8Array, status = 0): Uint8Array {
  const body = concatBytes(new Uint8Array([0x11, 0xe0]), nonce, new Uint8Array([status]));
  return concatBytes(body, new Uint8Array([body.reduce((a, b) => a ^ b, 0)]));
}

const options: VerifyOptions = {
  at: new Date('2026-01-01T00:00:00Z'),
  collateral: { get: async () => undefined },
};
const registry = new VerifierRegistry([sampleVerifier, fakeGpu]);
const reportData = fromHex('5a'.repeat(64));

async function machine(rd = reportData, gpuStatuses = [0, 0]) {
  const cpu = await (await createSampleAttester()).attest(rd);
  const gpus = await Promise.all(
    gpuStatuses.map(async (s, i) => fakeGpuEvidence(await deriveGpuNonce(rd, i), s)),
  );
  return { cpu, gpus };
}

async function refusal(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

describe('composite evidence', () => {
  it('derives the documented nonce', async () => {
    const expected = await sha256(
      concatBytes(utf8.encode('cloister/gpu-nonce/v1'), reportData, new Uint8Array([0, 0, 0, 2])),
    );
    expect(GPU_NONCE_LABEL).toBe('cloister/gpu-nonce/v1');
    expect(toHex(await deriveGpuNonce(reportData, 2))).toBe(toHex(expected));
    // Short report data is zero-padded to the 64-byte field first.
    expect(toHex(await deriveGpuNonce(fromHex('01'), 0))).toBe(
      toHex(await deriveGpuNonce(concatBytes(fromHex('01'), new Uint8Array(63)), 0)),
    );
    expect(toHex(await deriveGpuNonce(reportData, 0))).not.toBe(toHex(await deriveGpuNonce(reportData, 1)));
  });

  it('verifies a CPU with two bound GPUs; the status is the worst', async () => {
    const m = await machine(reportData, [0, 1]);
    const r = await appraiseComposite(
      { cpu: { evidence: m.cpu }, gpus: m.gpus.map((evidence) => ({ evidence })) },
      { ...options, expectedReportData: reportData },
      registry,
    );
    expect(Object.keys(r.submods)).toEqual(['cpu0', 'gpu0', 'gpu1']);
    expect(r.submods.gpu0!.status).toBe('affirming');
    expect(r.submods.gpu1!.status).toBe('warning');
    expect(r.submods.gpu0!.claims['cloister.gpu_nonce']).toBe(toHex(await deriveGpuNonce(reportData, 0)));
    expect(r.submods.gpu0!.findings).toContainEqual(expect.objectContaining({ check: 'cpu-binding' }));
    expect(r.status).toBe('warning'); // sample CPU is a warning at best, gpu1 too
  });

  it('is contraindicated when any part is', async () => {
    const cpu = await (await createSampleAttester({ debug: true })).attest(reportData);
    const gpu = fakeGpuEvidence(await deriveGpuNonce(reportData, 0));
    const r = await appraiseComposite(
      { cpu: { evidence: cpu }, gpus: [{ evidence: gpu }] },
      options,
      registry,
    );
    expect(r.status).toBe('contraindicated');
  });

  it('refuses GPU evidence spliced from another CPU attestation', async () => {
    const ours = await machine(reportData);
    const theirs = await machine(fromHex('77'.repeat(64)));
    const e = await refusal(
      appraiseComposite(
        { cpu: { evidence: ours.cpu }, gpus: [{ evidence: ours.gpus[0]! }, { evidence: theirs.gpus[1]! }] },
        options,
        registry,
      ),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'gpu-not-bound']);
    expect(e.message).toMatch(/^gpu1: .*spliced or replayed/);
  });

  it('refuses GPUs listed in another order (the index is bound)', async () => {
    const m = await machine();
    const e = await refusal(
      appraiseComposite(
        { cpu: { evidence: m.cpu }, gpus: [{ evidence: m.gpus[1]! }, { evidence: m.gpus[0]! }] },
        options,
        registry,
      ),
    );
    expect(e.code).toBe('gpu-not-bound');
  });

  it('reports a broken GPU report as itself, not as splicing', async () => {
    const m = await machine();
    const bad = m.gpus[0]!.slice();
    bad[35]! ^= 1;
    const e = await refusal(
      appraiseComposite({ cpu: { evidence: m.cpu }, gpus: [{ evidence: bad }] }, options, registry),
    );
    expect([e.stage, e.code]).toEqual(['verify', 'bad-signature']);
    expect(e.message).toMatch(/^gpu0: /);
  });

  it('refuses a failing CPU, wrong kinds and unregistered kinds', async () => {
    const m = await machine();
    const wrongRd = fromHex('00'.repeat(64));
    const cpuFail = await refusal(
      appraiseComposite(
        { cpu: { evidence: m.cpu }, gpus: [] },
        { ...options, expectedReportData: wrongRd },
        registry,
      ),
    );
    expect([cpuFail.code, cpuFail.message.startsWith('cpu0: ')]).toEqual(['report-data-mismatch', true]);
    const gpuAsCpu = await refusal(
      appraiseComposite({ cpu: { evidence: m.gpus[0]! }, gpus: [] }, options, registry),
    );
    expect(gpuAsCpu.code).toBe('composite-bad-kind');
    const cpuAsGpu = await refusal(
      appraiseComposite({ cpu: { evidence: m.cpu }, gpus: [{ evidence: m.cpu }] }, options, registry),
    );
    expect(cpuAsGpu.code).toBe('composite-bad-kind');
    const missing = await refusal(
      appraiseComposite(
        { cpu: { evidence: m.cpu }, gpus: [{ evidence: m.gpus[0]! }] },
        options,
        new VerifierRegistry([sampleVerifier]),
      ),
    );
    expect(missing.code).toBe('unsupported-kind');
    const unknown = await refusal(
      appraiseComposite({ cpu: { evidence: new Uint8Array(10) }, gpus: [] }, options, registry),
    );
    expect(unknown.code).toBe('unknown-format');
  });

  it('refuses a CPU verifier that exposes no report data', async () => {
    const m = await machine();
    const blind: KindVerifier = {
      kind: 'sample',
      appraiseEvidence: async (e, o) => {
        const a = await sampleVerifier.appraiseEvidence(e, o);
        return { ...a, claims: {} };
      },
    };
    const e = await refusal(
      appraiseComposite(
        { cpu: { evidence: m.cpu }, gpus: [{ evidence: m.gpus[0]! }] },
        options,
        new VerifierRegistry([blind, fakeGpu]),
      ),
    );
    expect(e.code).toBe('composite-no-report-data');
  });

  it('round-trips the file form and detects it', async () => {
    const m = await machine();
    const bytes = encodeCompositeEvidence({
      cpu: { kind: 'sample', evidence: m.cpu },
      gpus: [{ evidence: m.gpus[0]! }],
    });
    expect(isCompositeEvidence(bytes)).toBe(true);
    expect(isCompositeEvidence(m.cpu)).toBe(false);
    const back = decodeCompositeEvidence(bytes);
    expect(back.cpu.kind).toBe('sample');
    expect(toHex(back.gpus[0]!.evidence)).toBe(toHex(m.gpus[0]!));
    const r = await appraiseComposite(back, options, registry);
    expect(r.status).toBe('warning');
    const bad = utf8.encode(
      JSON.stringify({ format: 'cloister/composite-evidence/v1', cpu: { tee: 'x', evidence: '' }, gpus: [] }),
    );
    expect(() => decodeCompositeEvidence(bad)).toThrow(/not a TEE kind/);
    expect(() => decodeCompositeEvidence(utf8.encode('{"format":"other"}'))).toThrow(AttestationError);
  });
});
