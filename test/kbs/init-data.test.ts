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
import { KbsClient } from '../../src/kbs/client.js';
import { checkInitDataBinding, MAX_INIT_DATA_BYTES, parseInitData } from '../../src/kbs/init-data.js';
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

function appraisal(claims: Record<string, unknown>): Appraisal {
  return {
    kind: 'tdx',
    status: 'affirming',
    trustVector: {} as Appraisal['trustVector'],
    claims,
    findings: [],
  };
}

describe('parseInitData', () => {
  it('hashes the body as sent with the named algorithm and returns the data table', async () => {
    const init = await parseInitData({ format: 'toml', body: TOML });
    expect(init).toEqual({
      format: 'toml',
      version: '0.1.0',
      algorithm: 'sha384',
      digest: hex('sha384', TOML),
      data: {
        'cdh.toml': "[kbc]\nname = 'cc_kbc'\nurl = 'http://kbs.example:8080'\n",
        'policy.rego': 'package agent_policy',
      },
    });
    const json = JSON.stringify({ algorithm: 'sha-256', version: '0.1.0', data: { k: 'v' } });
    expect(await parseInitData({ format: 'json', body: json })).toMatchObject({
      digest: hex('sha256', json),
      data: { k: 'v' },
    });
  });

  it('refuses bad init-data with a 400 that says what is wrong', async () => {
    const cases: [{ format: string; body: string }, RegExp][] = [
      [{ format: 'yaml', body: 'a: b' }, /format must be "toml" or "json"/],
      [{ format: 'toml', body: 'version = ' }, /not valid TOML/],
      [{ format: 'json', body: '{' }, /not valid JSON/],
      [{ format: 'json', body: '[]' }, /must be a table/],
      [{ format: 'toml', body: 'version = "0.2.0"\nalgorithm = "sha384"' }, /version must be "0.1.0"/],
      [{ format: 'toml', body: 'version = "0.1.0"\nalgorithm = "md5"' }, /algorithm must be sha256/],
      [
        { format: 'toml', body: 'version = "0.1.0"\nalgorithm = "sha256"\ndata = 3' },
        /"data" must be a table/,
      ],
      [
        { format: 'toml', body: 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nn = 1' },
        /data.n must be a string/,
      ],
      [{ format: 'toml', body: `# ${'x'.repeat(MAX_INIT_DATA_BYTES)}` }, /at most/],
    ];
    for (const [init, message] of cases) {
      await expect(parseInitData(init), init.body.slice(0, 40)).rejects.toMatchObject({
        status: 400,
        type: 'bad-init-data',
        message: expect.stringMatching(message),
      });
    }
  });
});

describe('checkInitDataBinding', () => {
  it('matches TDX mr_config_id (48 bytes) and SNP host_data (32 bytes), cut or zero-padded', async () => {
    const sha384 = await parseInitData({ format: 'toml', body: TOML });
    checkInitDataBinding(sha384, appraisal({ mr_config_id: sha384.digest }));
    checkInitDataBinding(sha384, appraisal({ host_data: sha384.digest.slice(0, 64) }));
    const body = 'version = "0.1.0"\nalgorithm = "sha256"\n';
    const sha256 = await parseInitData({ format: 'toml', body });
    checkInitDataBinding(sha256, appraisal({ mr_config_id: hex('sha256', body) + '0'.repeat(32) }));
    expect(() => checkInitDataBinding(sha256, appraisal({ mr_config_id: '0'.repeat(96) }))).toThrow(
      expect.objectContaining({ code: 'init-data-mismatch' }),
    );
  });

  it('refuses init-data for a TEE whose evidence has no init-data field', async () => {
    const init = await parseInitData({ format: 'toml', body: TOML });
    expect(() => checkInitDataBinding(init, appraisal({ measurement: 'ab' }))).toThrow(
      expect.objectContaining({ code: 'init-data-unbound' }),
    );
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

  it('releases when host_data holds the digest and the policy reads the contents', async () => {
    const client = new KbsClient({
      url: b.url,
      attester: snpAttester(digest32(TOML)),
      initData: { format: 'toml', body: TOML },
    });
    expect(new TextDecoder().decode(await client.getResource('owner/cfg/key'))).toBe('configured');
  });

  it('denies by policy when no init-data was sent', async () => {
    const client = new KbsClient({ url: b.url, attester: snpAttester(digest32(TOML)) });
    await expect(client.getResource('owner/cfg/key')).rejects.toMatchObject({ status: 403, type: 'denied' });
  });

  it('refuses init-data whose digest is not in the report', async () => {
    const other = TOML.replace('kbs.example', 'evil.example');
    const client = new KbsClient({
      url: b.url,
      attester: snpAttester(digest32(TOML)),
      initData: { format: 'toml', body: other },
    });
    await expect(client.getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 403,
      type: 'attestation-init-data-mismatch',
    });
  });

  it('refuses init-data from a TEE that cannot bind it, and malformed init-data', async () => {
    const sample = new KbsClient({
      url: b.url,
      attester: await sampleAttester(),
      initData: { format: 'toml', body: TOML },
    });
    await expect(sample.getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 403,
      type: 'attestation-init-data-unbound',
    });
    const bad = new KbsClient({
      url: b.url,
      attester: snpAttester(digest32(TOML)),
      initData: { format: 'toml', body: 'version = "9"' },
    });
    await expect(bad.getResource('owner/cfg/key')).rejects.toMatchObject({
      status: 400,
      type: 'bad-init-data',
    });
  });
});
