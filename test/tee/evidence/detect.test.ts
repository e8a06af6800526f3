import { beforeAll, describe, expect, it } from 'vitest';
import { parseReport } from '../../../src/attest/snp/index.js';
import { SnpTestAuthority } from '../../../src/attest/testing/snp.js';
import { detectTee } from '../../../src/tee/evidence/detect.js';
import { nodeFs } from '../../../src/tee/evidence/node.js';
import { FakeTsm } from './fake-tsm.js';
import { devDir, gramineDir, routeFs, tempDir } from './helpers.js';

const TSM = '/sys/kernel/config/tsm/report';
let authority: SnpTestAuthority;

beforeAll(async () => {
  authority = await SnpTestAuthority.create();
});

describe('detectTee', () => {
  it('finds SEV-SNP through the configfs-tsm provider, removes its probe entry, and collects', async () => {
    const fake = new FakeTsm({ root: TSM, authority, provider: 'sev_guest' });
    const d = await detectTee({ fs: routeFs(TSM, fake), tsmRoot: TSM, devRoot: devDir() });
    expect(d.kind).toBe('snp');
    expect(d.attester?.insecure).toBe(false);
    expect(d.reasons).toEqual([`configfs-tsm: ${TSM}/<probe>/provider is "sev_guest": AMD SEV-SNP`]);
    expect(fake.created).toHaveLength(1);
    expect(fake.live()).toEqual([]);
    const rd = new Uint8Array(64).fill(0x11);
    const ev = await d.attester!.collect(rd);
    expect(ev.kind).toBe('snp');
    expect(parseReport(ev.evidence).reportData).toEqual(rd);
    expect(fake.live()).toEqual([]);
  });

  it('finds TDX through the tdx_guest provider', async () => {
    const fake = new FakeTsm({ root: TSM, provider: 'tdx_guest' });
    const d = await detectTee({ fs: routeFs(TSM, fake), tsmRoot: TSM, devRoot: devDir() });
    expect(d.kind).toBe('tdx');
    expect(d.reasons[0]).toMatch(/"tdx_guest": Intel TDX/);
  });

  it('with nothing present: no TEE, and a reason for every check naming what it looked at', async () => {
    const base = tempDir();
    const d = await detectTee({
      fs: nodeFs,
      tsmRoot: `${base}/tsm`,
      gramineRoot: `${base}/attestation`,
      devRoot: devDir(),
    });
    expect(d.kind).toBeUndefined();
    expect(d.attester).toBeUndefined();
    expect(d.reasons).toHaveLength(3);
    expect(d.reasons[0]).toMatch(new RegExp(`^configfs-tsm: ${base}/tsm does not exist`));
    expect(d.reasons[1]).toBe(
      `Gramine: ${base}/attestation does not exist (not inside a Gramine SGX enclave)`,
    );
    expect(d.reasons[2]).toMatch(/^sample: not used \(allow it with --allow-sample/);
    expect(d.gpus.devices).toEqual([]);
    expect(d.gpus.reasons[0]).toMatch(/no .*\/nvidia<N> device nodes: no NVIDIA GPU/);
  });

  it('hints at a legacy guest device when configfs-tsm is missing', async () => {
    const base = tempDir();
    const d = await detectTee({
      fs: nodeFs,
      tsmRoot: `${base}/tsm`,
      gramineRoot: `${base}/attestation`,
      devRoot: devDir('sev-guest'),
    });
    expect(d.kind).toBeUndefined();
    expect(d.reasons[1]).toMatch(/sev-guest exists, so this looks like a SEV-SNP guest.*configfs-tsm only/);
  });

  it('reports a configfs-tsm tree without a provider driver (ENXIO) and moves on', async () => {
    const fake = new FakeTsm({ root: TSM, provider: undefined });
    const d = await detectTee({
      fs: routeFs(TSM, fake),
      tsmRoot: TSM,
      gramineRoot: `${tempDir()}/x`,
      devRoot: devDir(),
    });
    expect(d.kind).toBeUndefined();
    expect(d.reasons[0]).toMatch(/gave no provider: .*no TSM provider is registered/);
  });

  it('reports an unknown provider and falls through to Gramine', async () => {
    const fake = new FakeTsm({ root: TSM, provider: 'arm_cca_guest' });
    const gramineRoot = gramineDir('dcap');
    const d = await detectTee({ fs: routeFs(TSM, fake), tsmRoot: TSM, gramineRoot, devRoot: devDir() });
    expect(d.reasons[0]).toMatch(/"arm_cca_guest", not a provider Cloister supports/);
    expect(d.kind).toBe('sgx');
    expect(d.reasons[1]).toBe(`Gramine: ${gramineRoot}/attestation_type is "dcap": Intel SGX`);
    expect(fake.live()).toEqual([]);
  });

  it('refuses Gramine without DCAP, and uses the sample TEE only when allowed', async () => {
    const base = tempDir();
    const opts = { fs: nodeFs, tsmRoot: `${base}/tsm`, gramineRoot: gramineDir('epid'), devRoot: devDir() };
    const refused = await detectTee(opts);
    expect(refused.kind).toBeUndefined();
    expect(refused.reasons[1]).toMatch(/attestation_type is "epid"; only "dcap" is supported/);
    const sample = await detectTee({ ...opts, allowSample: true });
    expect(sample.kind).toBe('sample');
    expect(sample.attester?.insecure).toBe(true);
    expect(sample.reasons.at(-1)).toMatch(/INSECURE sample TEE because it was allowed/);
  });
});
