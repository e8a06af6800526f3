import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { encodeCompositeEvidence } from '../../src/attest/composite.js';
import { verifyEar } from '../../src/attest/ear/index.js';
import { createSampleAttester } from '../../src/attest/sample/index.js';
import { fromBase64, fromHex, toBase64Url, utf8 } from '../../src/util/bytes.js';
import { cliTimeouts } from './run.js';

vi.setConfig(cliTimeouts());

// The CLI is tested as users run it: `node bin/cloister.js` over the compiled dist/ (`npm test` builds
// first; a bare `vitest run` builds here when dist/ is missing).
const dir = mkdtempSync(path.join(tmpdir(), 'cloister-cli-'));
const rd = '5a'.repeat(32);
const measurement = 'ab'.repeat(48);
const file = (name: string, content: string | Uint8Array) => {
  const p = path.join(dir, name);
  writeFileSync(p, content);
  return p;
};

function cloister(...args: string[]) {
  const r = spawnSync(process.execPath, ['bin/cloister.js', ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let evidence: string;

beforeAll(async () => {
  if (!existsSync('dist/cli/verify.js'))
    execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  const attester = await createSampleAttester({ measurement });
  evidence = file('evidence.json', await attester.attest(fromHex(rd)));
});

describe('cloister verify', () => {
  it('prints claims, every reason and the policy note; sample exits 2 (warning)', () => {
    const r = cloister('verify', evidence, '--report-data', rd);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/kind: +sample +\(INSECURE/);
    expect(r.out).toContain(`measurement: ${measurement}`);
    expect(r.out).toMatch(/\[warning\] insecure: /);
    expect(r.out).toMatch(/\[not judged\] measurement: /);
    expect(r.out).toMatch(
      /note: no --policy given.*not judged: measurement.*"affirming" would be a judgement of the platform/,
    );
    expect(r.out).toContain('result: WARNING');
    expect(r.err).toBe('');
  });

  it('--json prints {status, kind, claims, findings, trustVector}', () => {
    const r = cloister('verify', evidence, '--json');
    expect(r.code).toBe(2);
    const doc = JSON.parse(r.out);
    expect(doc).toMatchObject({
      status: 'warning',
      kind: 'sample',
      insecure: true,
      trustVector: { hardware: 32 },
    });
    expect(doc.claims.measurement).toBe(measurement);
    expect(doc.findings.map((f: { check: string }) => f.check)).toEqual([
      'insecure',
      'debug',
      'measurement',
      'report_data',
    ]);
  });

  it('with a matching policy the sample TEE is still only a warning; a mismatch exits 3', () => {
    const good = file(
      'good.json',
      JSON.stringify({ referenceValues: { measurement: [measurement.toUpperCase()] } }),
    );
    const r = cloister('verify', evidence, '--policy', good);
    expect(r.code).toBe(2);
    expect(r.out).not.toContain('note: no --policy');
    const bad = file('bad.json', JSON.stringify({ referenceValues: { measurement: ['cd'.repeat(48)] } }));
    const m = cloister('verify', evidence, '--policy', bad);
    expect(m.code).toBe(3);
    expect(m.out).toMatch(/\[contraindicated\] measurement: /);
  });

  it('refuses a policy with unknown fields (there is no allowInsecure)', () => {
    const p = file('insecure.json', JSON.stringify({ allowInsecure: true }));
    const r = cloister('verify', evidence, '--policy', p);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/unknown field\(s\) allowInsecure/);
    expect(r.err.trim().split('\n')).toHaveLength(1);
  });

  it('exits 1 with one clear line for a tampered signature and for wrong report data', () => {
    const json = JSON.parse(utf8.decode(new Uint8Array(readFileSync(evidence))));
    const sig = fromBase64(json.signature);
    sig[0]! ^= 0x80;
    const tampered = file('tampered.json', JSON.stringify({ ...json, signature: toBase64Url(sig) }));
    const t = cloister('verify', tampered);
    expect(t.code).toBe(1);
    expect(t.err).toMatch(/^cloister verify: sample verify failed \[bad-signature\]: .+\n$/);
    expect(t.out).toBe('');
    const w = cloister('verify', evidence, '--report-data', '00'.repeat(32), '--json');
    expect(w.code).toBe(1);
    expect(w.err).toMatch(/\[report-data-mismatch\]/);
    expect(JSON.parse(w.out)).toMatchObject({
      status: 'error',
      error: { stage: 'verify', code: 'report-data-mismatch' },
    });
  });

  it('exits 1 for unknown formats, unregistered kinds and missing files; 64 for bad flags', () => {
    const junk = file('junk.bin', new Uint8Array(100));
    expect(cloister('verify', junk).err).toMatch(/cannot tell the TEE kind .* --tee/);
    expect(cloister('verify', junk).code).toBe(1);
    expect(cloister('verify', path.join(dir, 'missing.json')).code).toBe(1);
    // A flag of the wrong form is a usage error (64), not a failed verification.
    const at = cloister('verify', evidence, '--at', 'yesterday');
    expect([at.code, at.err]).toEqual([64, expect.stringMatching(/--at yesterday is not a time/)]);
    const rd = cloister('verify', evidence, '--report-data', 'xyz');
    expect([rd.code, rd.err]).toEqual([64, expect.stringMatching(/--report-data must be hex/)]);
    expect(cloister('verify', evidence, '--tee', 'nope').code).toBe(64);
    // Sample evidence handed to another kind's verifier (or to none) is never accepted.
    const other = cloister('verify', evidence, '--tee', 'tdx');
    expect(other.code).toBe(1);
    expect(other.err).toMatch(/^cloister verify: tdx \w+ failed \[[a-z-]+\]: /);
  });

  it('signs an EAR with --ear-key that marks the sample result insecure', async () => {
    const kp = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const key = file('ear.jwk', JSON.stringify(await crypto.subtle.exportKey('jwk', kp.privateKey)));
    const r = cloister('verify', evidence, '--json', '--ear-key', key);
    expect(r.code).toBe(2);
    const ear = await verifyEar(JSON.parse(r.out).ear, kp.publicKey);
    expect(ear.submods.cpu0).toMatchObject({ status: 'warning', insecure: true, kind: 'sample' });
    const human = cloister('verify', evidence, '--ear-key', key);
    expect(human.out).toMatch(/^ear: ey/m);
    expect(cloister('verify', evidence, '--ear-key', evidence).err).toMatch(/not an ES256/);
  });

  it('verifies composite evidence files', async () => {
    const cpu = await (await createSampleAttester()).attest(fromHex(rd));
    const c = file('composite.json', encodeCompositeEvidence({ cpu: { evidence: cpu }, gpus: [] }));
    const r = cloister('verify', c, '--json');
    expect(r.code).toBe(2);
    expect(JSON.parse(r.out)).toMatchObject({
      status: 'warning',
      kind: 'composite',
      submods: { cpu0: { kind: 'sample' } },
    });
  });

  it('has --help with an example', () => {
    const r = cloister('verify', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/Examples:\n\s+# software sample TEE/);
    expect(r.out).toMatch(/Exit status: 0 affirming, 2 warning/);
  });
});
