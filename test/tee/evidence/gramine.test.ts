import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { detectKind } from '../../../src/attest/registry.js';
import { GramineAttester } from '../../../src/tee/evidence/gramine.js';
import { nodeFs } from '../../../src/tee/evidence/node.js';
import { gramineDir, sgxQuote } from './helpers.js';

// Gramine's /dev/attestation files are plain pseudo-files, so a real folder (through the real nodeFs)
// imitates them; the quote is pre-written for the report data the test will ask for.
describe('GramineAttester (SGX through /dev/attestation)', () => {
  it('writes user_report_data and returns the quote bytes as sgx evidence', async () => {
    const rd = crypto.getRandomValues(new Uint8Array(64));
    const root = gramineDir('dcap', rd);
    const got = await new GramineAttester({ fs: nodeFs, root }).collect(rd);
    expect(got.kind).toBe('sgx');
    expect(got.evidence).toEqual(sgxQuote(rd));
    expect(detectKind(got.evidence)).toBe('sgx');
    expect(new Uint8Array(readFileSync(path.join(root, 'user_report_data')))).toEqual(rd);
  });

  it('refuses a quote that answers other report data (stale quote)', async () => {
    const root = gramineDir('dcap', new Uint8Array(64).fill(1));
    await expect(
      new GramineAttester({ fs: nodeFs, root }).collect(new Uint8Array(64).fill(2)),
    ).rejects.toMatchObject({ code: 'report-data-mismatch' });
  });

  it('refuses attestation types other than dcap, naming the manifest setting', async () => {
    const root = gramineDir('none');
    await expect(new GramineAttester({ fs: nodeFs, root }).collect(new Uint8Array(64))).rejects.toMatchObject(
      {
        code: 'gramine-not-dcap',
        message: expect.stringMatching(/"none".*sgx\.remote_attestation = "dcap"/),
      },
    );
  });

  it('says which file is missing', async () => {
    const root = gramineDir('dcap');
    await expect(new GramineAttester({ fs: nodeFs, root }).collect(new Uint8Array(64))).rejects.toMatchObject(
      {
        code: 'gramine-io',
        message: expect.stringContaining(`${root}/quote`),
      },
    );
    await expect(
      new GramineAttester({ fs: nodeFs, root: `${root}-absent` }).collect(new Uint8Array(64)),
    ).rejects.toMatchObject({ code: 'gramine-unavailable' });
  });

  it('serialises concurrent collections so each gets its own quote', async () => {
    // A fake whose quote always answers the last user_report_data written, like Gramine's.
    let last = new Uint8Array(64);
    const fs = {
      ...nodeFs,
      readFile: async (p: string) =>
        p.endsWith('attestation_type') ? new TextEncoder().encode('dcap\n') : sgxQuote(last),
      writeFile: async (_p: string, d: Uint8Array) => {
        await new Promise((r) => setTimeout(r, 5));
        last = d.slice();
      },
    };
    const a = new GramineAttester({ fs, root: '/dev/attestation' });
    const rds = [1, 2, 3, 4].map((b) => new Uint8Array(64).fill(b));
    const got = await Promise.all(rds.map((rd) => a.collect(rd)));
    expect(got.map((g) => g.evidence.subarray(368, 432))).toEqual(rds);
  });
});
