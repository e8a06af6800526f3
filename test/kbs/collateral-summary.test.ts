/**
 * The broker says at start which collateral it has and lacks: one line per start naming the folder,
 * what it holds per vendor (by the file names the verifiers look for) and what it will refuse offline.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { collateralSummary } from '../../src/kbs/collateral-summary.js';
import { testBroker } from './helpers.js';

function folder(files: string[]): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'cloister-collateral-'));
  for (const f of files) writeFileSync(path.join(dir, f), 'x');
  return dir;
}

describe('collateralSummary', () => {
  it('counts what a folder holds per vendor', async () => {
    const dir = folder([
      'tdx_tcb_info_b0c06f000000.json',
      'tdx_tcb_info_b0c06f000000.json.headers.json',
      'tdx_tcb_info_90c06f000000.json',
      'sgx_tcb_info_00a067000000.json',
      'tdx_qe_identity.json',
      'pck_crl_platform.der',
      'pck_crl_processor.der',
      'root_ca_crl.der',
      `vcek_${'ab'.repeat(64)}_${'0'.repeat(16)}.der`,
      'amd_ark_milan_crl.der',
      'NV_GPU_DRIVER_GH100_545.00.xml',
      'vbios_rim.swidtag',
      'unrelated.txt',
    ]);
    expect(await collateralSummary({ dir, online: false })).toBe(
      `collateral: dir ${dir} — Intel PCS: TCB info for 3 FMSPCs (2 TDX, 1 SGX), QE identity (TDX), 2 PCK CRLs, root CA CRL; AMD KDS: 1 VCEK, 1 CRL; NVIDIA RIMs: 2; offline`,
    );
  });

  it('says what each vendor lacks and what will be refused offline', async () => {
    const dir = folder(['tcb_info_b0c06f000000.json']);
    expect(await collateralSummary({ dir, online: false })).toBe(
      `collateral: dir ${dir} — Intel PCS: TCB info for 1 FMSPC (1 SGX or TDX) — lacks QE identity, PCK CRL, root CA CRL (TDX/SGX evidence will be refused offline); AMD KDS: none (SNP evidence will be refused offline unless it carries its VCEK); NVIDIA RIMs: none (GPU measurements will not be judged offline); offline`,
    );
    const empty = folder([]);
    expect(await collateralSummary({ dir: empty, online: true, cacheDir: 'cache/' })).toMatch(
      /Intel PCS: none \(TDX\/SGX evidence will be refused offline\); AMD KDS: none .*; online: what the folder lacks is fetched from Intel PCS, AMD KDS and NVIDIA \(cached in cache\/\)$/,
    );
    const bundle = folder(['collateral.json', 'crl.der']);
    expect(await collateralSummary({ dir: bundle, online: false })).toContain(
      'Intel PCS: 1 unnamed set; AMD KDS: 1 CRL (no VCEK: SNP evidence will be refused offline unless it carries its VCEK)',
    );
  });

  it('names a folder that does not exist, and no folder at all', async () => {
    const missing = path.join(folder([]), 'nope');
    expect(await collateralSummary({ dir: missing, online: false })).toBe(
      `collateral: dir ${missing} DOES NOT EXIST (offline): fill it with \`cloister collateral fetch --out ${missing}\``,
    );
    expect(await collateralSummary({ online: false })).toMatch(
      /^collateral: none \(no dir, offline\): TDX\/SGX evidence, and SNP evidence without its VCEK, will be refused/,
    );
    expect(await collateralSummary({ online: true })).toBe(
      'collateral: no dir; online: what the folder lacks is fetched from Intel PCS, AMD KDS and NVIDIA',
    );
  });

  it('is logged once when the broker starts', async () => {
    const dir = folder([]);
    mkdirSync(path.join(dir, 'sub'));
    const b = await testBroker({ collateral: { dir, online: false } });
    try {
      const lines = b.lines.filter((l) => l.includes('collateral:'));
      expect(lines).toEqual([
        `cloister-kbs: collateral: dir ${dir} — Intel PCS: none (TDX/SGX evidence will be refused offline); AMD KDS: none (SNP evidence will be refused offline unless it carries its VCEK); NVIDIA RIMs: none (GPU measurements will not be judged offline); offline`,
      ]);
    } finally {
      await b.close();
    }
  });
});
