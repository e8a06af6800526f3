import { beforeAll, describe, expect, it } from 'vitest';
import { AttestationError, type KindVerifier } from '../../../src/attest/common/types.js';
import { appraiseComposite, deriveGpuNonce } from '../../../src/attest/composite.js';
import { VerifierRegistry } from '../../../src/attest/registry.js';
import { snpVerifier } from '../../../src/attest/snp/index.js';
import { SnpTestAuthority } from '../../../src/attest/testing/snp.js';
import { collectComposite, collectGpuEvidence } from '../../../src/tee/evidence/composite.js';
import { NvattestGpuAttester } from '../../../src/tee/evidence/nvml.js';
import { TsmAttester } from '../../../src/tee/evidence/tsm.js';
import { sha384, toHex, utf8 } from '../../../src/util/bytes.js';
import { FakeTsm } from './fake-tsm.js';
import { VECTOR_ENTRY } from './helpers.js';

const ROOT = '/sys/kernel/config/tsm/report';
let authority: SnpTestAuthority;

beforeAll(async () => {
  authority = await SnpTestAuthority.create();
});

/** nvattest stand-in: every GPU answers the nonce it was given. */
function gpuAttester(count: number) {
  return new NvattestGpuAttester(async (_f, args) => {
    const nonce = args[args.indexOf('--nonce') + 1]!;
    const evidences = Array.from({ length: count }, () => ({ ...VECTOR_ENTRY, nonce }));
    return { code: 0, stdout: JSON.stringify({ result_code: 0, evidences }), stderr: '' };
  }, count);
}

/**
 * The NVIDIA verifier lives on another branch; this stand-in checks only the binding the composite
 * verifier relies on: the GPU evidence answers `expectedReportData`.
 */
const nvidiaBindingOnly: KindVerifier = {
  kind: 'nvidia',
  async appraiseEvidence(evidence, options) {
    const [entry] = JSON.parse(utf8.decode(evidence));
    if (options.expectedReportData && entry.nonce !== toHex(options.expectedReportData)) {
      throw new AttestationError('verify', 'report-data-mismatch', 'nonce differs');
    }
    return { kind: 'nvidia', status: 'affirming', trustVector: {}, claims: {}, findings: [] };
  },
};

describe('collectComposite', () => {
  it('binds GPU i to deriveGpuNonce(cpu report data, i); appraiseComposite accepts it', async () => {
    const fake = new FakeTsm({ root: ROOT, authority, provider: 'sev_guest' });
    const reportData = crypto.getRandomValues(new Uint8Array(64));
    const c = await collectComposite({
      cpu: new TsmAttester({ fs: fake, root: ROOT }),
      gpu: gpuAttester(2),
      reportData,
    });
    expect(c.cpu.kind).toBe('snp');
    expect(c.gpus.map((g) => toHex(g.nonce))).toEqual([
      toHex(await deriveGpuNonce(reportData, 0)),
      toHex(await deriveGpuNonce(reportData, 1)),
    ]);
    const registry = new VerifierRegistry([snpVerifier, nvidiaBindingOnly]);
    const result = await appraiseComposite(
      { cpu: c.cpu, gpus: c.gpus },
      {
        at: new Date(),
        collateral: authority.collateral(fake.issued.at(-1)!),
        trustAnchors: [authority.trustAnchor],
        expectedReportData: reportData,
      },
      registry,
    );
    expect(Object.keys(result.submods)).toEqual(['cpu0', 'gpu0', 'gpu1']);
    // Swapped GPUs answer each other's nonces and are refused.
    await expect(
      appraiseComposite(
        { cpu: c.cpu, gpus: [c.gpus[1]!, c.gpus[0]!] },
        {
          at: new Date(),
          collateral: authority.collateral(fake.issued.at(-1)!),
          trustAnchors: [authority.trustAnchor],
        },
        registry,
      ),
    ).rejects.toMatchObject({ code: 'gpu-not-bound' });
  });

  it('KBS form: GPUs answer nonces derived from SHA-384 of the runtime data, not the CPU report data', async () => {
    const base = await sha384(utf8.encode('{"nonce":"abc","tee-pubkey":{}}'));
    const gpus = await collectGpuEvidence(gpuAttester(1), base);
    expect(toHex(gpus[0]!.nonce)).toBe(toHex(await deriveGpuNonce(base, 0)));
    expect(JSON.parse(utf8.decode(gpus[0]!.evidence))[0].nonce).toBe(toHex(gpus[0]!.nonce));
  });

  it('without GPUs collects the CPU evidence alone', async () => {
    const fake = new FakeTsm({ root: ROOT, authority, provider: 'sev_guest' });
    const c = await collectComposite({
      cpu: new TsmAttester({ fs: fake, root: ROOT }),
      reportData: new Uint8Array(64),
    });
    expect(c.gpus).toEqual([]);
    expect(c.cpu.evidence).toHaveLength(1184);
  });
});
