/**
 * `cloister verify REPORT --nvidia-certs CHAIN.pem`: NVIDIA GPU reports as NVIDIA's tools write them
 * (the SPDM report in hex or binary, the PEM chain beside it), verified with the repository's real
 * vectors (test/vectors/nvidia-gpu) and the verdicts docs/attestation/nvidia.md gives for them.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runVerify, type VerifyCliOptions } from '../../src/cli/verify.js';
import { fromHex } from '../../src/util/bytes.js';

const V = 'test/vectors/nvidia-gpu';
const H545 = `${V}/nvtrust_hopper_545.00_complete`;
const B575 = `${V}/nvat-sdk_blackwell_575.32`;
const NONCE = '4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e';
const dir = mkdtempSync(path.join(tmpdir(), 'cloister-verify-nvidia-'));
const file = (name: string, content: string | Uint8Array) => {
  writeFileSync(path.join(dir, name), content);
  return path.join(dir, name);
};

async function verify(evidence: string, opts: VerifyCliOptions) {
  let out = '';
  let err = '';
  const code = await runVerify(evidence, opts, {
    out(s) {
      out += s;
    },
    err(s) {
      err += s;
    },
  });
  return { code, out, err };
}

describe('cloister verify --nvidia-certs', () => {
  it('verifies the hex report and PEM chain of the complete Hopper vector, RIMs found beside them', async () => {
    const r = await verify(`${H545}/attestation_report.hex`, {
      nvidiaCerts: `${H545}/cert_chain.pem`,
      at: '2024-06-01T00:00:00Z',
      reportData: NONCE,
      json: true,
    });
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out);
    expect(doc).toMatchObject({ status: 'affirming', kind: 'nvidia' });
    expect(doc.claims.driver_rim.version).toBe('545.00');
    expect(doc.claims.vbios_rim.version).toBe('96.00.5E.00.01');
    // The nonce was checked: instance identity affirmed, no "not judged" nonce finding.
    expect(doc.trustVector.instance_identity).toBe(2);
    expect(doc.findings.map((f: { check: string }) => f.check)).not.toContain('nonce');
  });

  it('takes the report as binary too, and the Blackwell vector', async () => {
    const bin = file('report.bin', fromHex(readFileSync(`${H545}/attestation_report.hex`, 'utf8').trim()));
    const hopper = await verify(bin, {
      nvidiaCerts: `${H545}/cert_chain.pem`,
      collateral: H545,
      at: '2024-06-01T00:00:00Z',
      json: true,
    });
    expect([hopper.code, JSON.parse(hopper.out).claims.driver_rim.version]).toEqual([0, '545.00']);
    const blackwell = await verify(`${B575}/attestation_report.hex`, {
      nvidiaCerts: `${B575}/cert_chain.pem`,
      tee: 'nvidia',
      at: '2030-01-01T00:00:00Z',
    });
    expect(blackwell.code).toBe(0);
    expect(blackwell.out).toContain('result: AFFIRMING');
  });

  it('refuses another nonce and another GPU chain as the verifier does', async () => {
    const nonce = await verify(`${H545}/attestation_report.hex`, {
      nvidiaCerts: `${H545}/cert_chain.pem`,
      at: '2024-06-01T00:00:00Z',
      reportData: '00'.repeat(32),
    });
    expect(nonce.code).toBe(1);
    expect(nonce.err).toMatch(/\[nonce-mismatch\]/);
    const chain = await verify(`${H545}/attestation_report.hex`, {
      nvidiaCerts: `${B575}/cert_chain.pem`,
      at: '2024-06-01T00:00:00Z',
    });
    expect(chain.code).toBe(1);
    expect(chain.err).toMatch(/^cloister verify: nvidia (parse|verify) failed/);
  });

  it('says what to add for a bare report, and names the file that is not a report or a chain', async () => {
    const bare = await verify(`${H545}/attestation_report.hex`, {});
    expect(bare.code).toBe(1);
    expect(bare.err).toContain(
      `${H545}/attestation_report.hex is a bare NVIDIA report: give its PEM certificate chain with --nvidia-certs FILE`,
    );
    const cases: [string, VerifyCliOptions, string][] = [
      [
        `${H545}/cert_chain.pem`,
        { nvidiaCerts: `${H545}/cert_chain.pem` },
        `${H545}/cert_chain.pem: not an NVIDIA SPDM report`,
      ],
      [
        file('odd.hex', '11e0zz'),
        { nvidiaCerts: `${H545}/cert_chain.pem` },
        'odd.hex: not an NVIDIA SPDM report',
      ],
      [
        `${H545}/attestation_report.hex`,
        { nvidiaCerts: `${H545}/attestation_report.hex` },
        'attestation_report.hex: not a PEM certificate chain',
      ],
      [
        `${H545}/attestation_report.hex`,
        { nvidiaCerts: path.join(dir, 'none.pem') },
        `cannot read --nvidia-certs ${path.join(dir, 'none.pem')}`,
      ],
      [
        `${H545}/attestation_report.hex`,
        { nvidiaCerts: `${H545}/cert_chain.pem`, tee: 'tdx' },
        '--nvidia-certs is for an NVIDIA GPU report, not --tee tdx',
      ],
    ];
    for (const [evidence, opts, message] of cases) {
      const r = await verify(evidence, opts);
      expect([r.code, r.err.trim().split('\n').length], message).toEqual([1, 1]);
      expect(r.err).toContain(message);
    }
  });
});
