/**
 * CoCo init-data: parsing and hashing as the initdata spec says, the binding to TDX mr_config_id and
 * SNP host_data (cut or zero-padded), and the whole path through a broker with test-authority SNP
 * evidence: released when the digest is in the report and a policy reads the contents, refused when
 * it is not, when the TEE has no such field, and for malformed init-data.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Appraisal } from '../../src/attest/common/types.js';
import { SnpTestAuthority } from '../../src/attest/testing/snp.js';
import { bindInitData, MAX_INIT_DATA_BYTES, receiveInitData } from '../../src/kbs/init-data.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { toBase64Url } from '../../src/util/bytes.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const TOML = `algorithm = "sha384"
version = "0.1.0"

[data]
"cdh.toml" = '''
[kbc]
name = 'cc_kbc'
url = 'http://kbs.example:8080'
'''
"policy.rego" = '''package agent_policy'''
`;

const hex = (alg: string, s: string) => createHash(alg).update(s).digest('hex');

function appraisal(kind: Appraisal['kind'], claims: Record<string, unknown>): Appraisal {
  return {
    kind,
    status: 'affirming',
    trustVector: {} as Appraisal['trustVector'],
    claims,
    findings: [],
  };
}

const received = (body: string, format: 'toml' | 'json' = 'toml') => receiveInitData({ format, body });

describe('receiveInitData', () => {
  it('hashes the body as sent under every algorithm, before parsing anything', async () => {
    const r = await received(TOML);
    expect(r.digests).toEqual({
      'SHA-256': hex('sha256', TOML),
      'SHA-384': hex('sha384', TOML),
      'SHA-512': hex('sha512', TOML),
    });
    // Not parsed yet: a body that is no TOML at all is received the same way.
    expect((await received('{{{ not toml')).digests['SHA-256']).toBe(hex('sha256', '{{{ not toml'));
  });

  it('refuses an unknown format or an oversized body with a 400', async () => {
    const cases: [{ format: string; body: string }, RegExp][] = [
      [{ format: 'yaml', body: 'a: b' }, /format must be "toml" or "json"/],
      [{ format: 'toml', body: `# ${'x'.repeat(MAX_INIT_DATA_BYTES)}` }, /at most/],
    ];
    for (const [init, message] of cases) {
      await expect(receiveInitData(init)).rejects.toMatchObject({
        code: 'bad-init-data',
        message: expect.stringMatching(message),
      });
    }
  });
});

describe('bindInitData', () => {
  it('finds the digest in TDX mr_config_id (48 bytes) and SNP host_data (32 bytes), cut or zero-padded', async () => {
    const r = await received(TOML);
    expect(bindInitData(r, appraisal('tdx', { mr_config_id: hex('sha384', TOML) }))).toEqual({
      format: 'toml',
      version: '0.1.0',
      algorithm: 'sha384',
      digest: hex('sha384', TOML),
      data: {
        'cdh.toml': "[kbc]\nname = 'cc_kbc'\nurl = 'http://kbs.example:8080'\n",
        'policy.rego': 'package agent_policy',
      },
    });
    expect(bindInitData(r, appraisal('snp', { host_data: hex('sha384', TOML).slice(0, 64) })).digest).toBe(
      hex('sha384', TOML),
    );
    const json = JSON.stringify({ algorithm: 'sha-256', version: '0.1.0', data: { k: 'v' } });
    const padded = `${hex('sha256', json)}${'0'.repeat(32)}`;
    expect(
      bindInitData(await received(json, 'json'), appraisal('tdx', { mr_config_id: padded })),
    ).toMatchObject({
      algorithm: 'sha-256',
      data: { k: 'v' },
    });
  });

  it('refuses a digest that is not there, and a TEE without an init-data field', async () => {
    const r = await received(TOML);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return 'accepted';
    };
    expect(code(() => bindInitData(r, appraisal('tdx', { mr_config_id: '0'.repeat(96) })))).toBe(
      'init-data-mismatch',
    );
    // The field of another kind does not count: an SGX report cannot claim host_data.
    expect(
      code(() => bindInitData(r, appraisal('sgx', { host_data: hex('sha384', TOML).slice(0, 64) }))),
    ).toBe('init-data-unbound');
    expect(code(() => bindInitData(r, appraisal('sample', {})))).toBe('init-data-unbound');
    expect(code(() => bindInitData(r, appraisal('tdx', {})))).toBe('init-data-unbound');
    // The evidence holds the sha384 digest, but the body names sha512.
    const other = TOML.replace('sha384', 'sha512');
    expect(
      code(() =>
        bindInitData({ ...r, body: other }, appraisal('tdx', { mr_config_id: r.digests['SHA-384'] })),
      ),
    ).toBe('init-data-mismatch');
  });

  it('refuses bound init-data that is not valid init-data with a 400 that says what is wrong', async () => {
    const cases: [string, 'toml' | 'json', RegExp][] = [
      ['version = ', 'toml', /not valid TOML/],
      ['{', 'json', /not valid JSON/],
      ['[]', 'json', /must be a table/],
      ['version = "0.2.0"\nalgorithm = "sha384"', 'toml', /version must be "0.1.0"/],
      ['version = "0.1.0"\nalgorithm = "md5"', 'toml', /algorithm must be sha256/],
      ['version = "0.1.0"\nalgorithm = "sha384"\ndata = 3', 'toml', /"data" must be a table/],
      ['version = "0.1.0"\nalgorithm = "sha384"\n[data]\nn = 1', 'toml', /data.n must be a string/],
    ];
    for (const [body, format, message] of cases) {
      const r = await received(body, format);
      expect(() => bindInitData(r, appraisal('tdx', { mr_config_id: hex('sha384', body) })), body).toThrow(
        expect.objectContaining({
          code: 'bad-init-data',
          message: expect.stringMatching(message),
        }),
      );
    }
  });

  it('keeps a data entry named __proto__ as data', async () => {
    const body = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"__proto__" = "x"\n';
    const init = bindInitData(await received(body), appraisal('tdx', { mr_config_id: hex('sha384', body) }));
    expect(Object.entries(init.data)).toEqual([['__proto__', 'x']]);
  });
});

describe('init-data through the broker (test-authority SEV-SNP)', () => {
  let b: TestBroker;
  let snp: SnpTestAuthority;
  const SECRET = new TextEncoder().encode('configured');
  beforeAll(async () => {
    snp = await SnpTestAuthority.create();
    const probe = await snp.issue({});
    b = await testBroker(
      { devMode: true },
      { collateral: snp.collateral(probe), trustAnchors: { snp: [snp.trustAnchor] } },
    );
    const admin = await b.admin();
    expect((await b.call('PUT', '/admin/v1/resources/owner/cfg/key', admin, SECRET)).status).toBe(201);
    const policy = await b.call('PUT', '/admin/v1/policies', admin, {
      scope: 'resource:owner/cfg/key',
      source: `submods.cpu0.status == "affirming" && "cdh.toml" in init_data.data && init_data.data["cdh.toml"].contains("kbs.example")`,
    });
    expect(policy.status).toBe(200);
  });
  afterAll(() => b.close());

  const snpAttester = (hostData: Uint8Array) => ({
    tee: 'snp',
    async primaryEvidence(reportData: Uint8Array) {
      const r = await snp.issue({ reportData, hostData });
      return { report: toBase64Url(r.report), vcek: toBase64Url(r.endorsementKey) };
    },
  });
  const digest32 = (s: string) => new Uint8Array(createHash('sha384').update(s).digest().subarray(0, 32));

  /** An SNP guest launched with `launched`'s digest in host_data, sending `sent` as its init-data. */
  const guest = (launched: string, sent?: string) =>
    new KbsClient({
      url: b.url,
      attester: snpAttester(digest32(launched)),
      ...(sent !== undefined ? { initData: { format: 'toml' as const, body: sent } } : {}),
    });

  it('releases when host_data holds the digest and the policy reads the contents', async () => {
    expect(new TextDecoder().decode(await guest(TOML, TOML).getResource('owner/cfg/key'))).toBe('configured');
  });

  it('denies by policy when no init-data was sent', async () => {
    await expect(guest(TOML).getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 403,
      type: 'denied',
    });
  });

  it('refuses init-data whose digest is not in the report', async () => {
    const other = TOML.replace('kbs.example', 'evil.example');
    await expect(guest(TOML, other).getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 403,
      type: 'attestation-init-data-mismatch',
    });
  });

  it('refuses init-data from a sample TEE launched without it, and malformed init-data', async () => {
    const sample = new KbsClient({
      url: b.url,
      attester: await sampleAttester(),
      initData: { format: 'toml', body: TOML },
    });
    await expect(sample.getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 403,
      type: 'attestation-init-data-unbound',
    });
    // Bound to the report (so parsed), but not init-data: the host launched the TEE with garbage.
    const garbage = 'version = "9"';
    await expect(guest(garbage, garbage).getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 400,
      type: 'bad-init-data',
    });
  });
});
