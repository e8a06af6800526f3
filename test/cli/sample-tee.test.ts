/**
 * `--sample-measurement` and `--init-data` with the sample TEE: the measurement is checked as a flag,
 * and the TEE the in-TEE verbs attest with reports it and the init-data's digest in host_data.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { describe, expect, it } from 'vitest';
import { parseSampleEvidence } from '../../src/attest/sample/index.js';
import { teeFor } from '../../src/cli/agent.js';
import { sampleLaunch, sampleMeasurementArg } from '../../src/cli/sample-tee.js';

const dir = mkdtempSync(join(tmpdir(), 'cloister-sample-tee-'));
const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
};
const INIT = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"a" = "b"\n';

describe('--sample-measurement', () => {
  it('takes 48 bytes of hex, kept lower-case', () => {
    expect(sampleMeasurementArg('AB'.repeat(48))).toBe('ab'.repeat(48));
  });

  it('refuses anything else as a usage error', () => {
    for (const bad of ['ab'.repeat(32), 'ab'.repeat(49), 'zz'.repeat(48), '']) {
      expect(() => sampleMeasurementArg(bad)).toThrow(InvalidArgumentError);
    }
    expect(() => sampleMeasurementArg('ab')).toThrow(/48 bytes of hex \(96 digits\), got 2 characters/);
  });
});

describe('the sample TEE launched with a measurement and init-data', () => {
  const base = {
    tee: 'sample' as const,
    gpu: false,
    retries: '1',
    retryDelayMs: '0',
    sampleEvidence: 'cloister' as const,
  };

  it('reports the measurement, and the init-data digest as host_data', async () => {
    const init = file('init.toml', INIT);
    const t = await teeFor({ ...base, sampleMeasurement: 'ab'.repeat(48), initData: init }, () => {});
    const parsed = parseSampleEvidence((await t.attester.collect(new Uint8Array(64))).evidence);
    expect(parsed.measurement).toBe('ab'.repeat(48));
    expect(parsed.hostData).toBe(createHash('sha384').update(INIT).digest('hex').slice(0, 64));
    const plain = await teeFor(base, () => {});
    const p = parseSampleEvidence((await plain.attester.collect(new Uint8Array(64))).evidence);
    expect([p.measurement, p.hostData]).toEqual(['00'.repeat(48), undefined]);
  });

  it('names the --init-data file it cannot read or hash', async () => {
    const missing = join(dir, 'missing.toml');
    await expect(sampleLaunch({ initData: missing })).rejects.toThrow(
      new RegExp(`^cannot read --init-data ${missing}: ENOENT`),
    );
    const bad = file('bad.json', '{"algorithm": "md5"}');
    await expect(sampleLaunch({ initData: bad })).rejects.toThrow(
      new RegExp(`^${bad}: init-data algorithm must be sha256`),
    );
  });
});
