import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { nativeAesGcm } from '../../src/seal/aead-native.js';

const valgrind = spawnSync('valgrind', ['--version']).status === 0;

describe.skipIf(!nativeAesGcm || !valgrind)('native addon under valgrind memcheck', () => {
  it('never reads or writes out of bounds, whatever the lengths', () => {
    const script = fileURLToPath(new URL('./native-memcheck.mjs', import.meta.url));
    // --jitless keeps V8's generated code out of memcheck's way; only heap errors are of interest.
    const r = spawnSync(
      'valgrind',
      ['--error-exitcode=9', '--undef-value-errors=no', process.execPath, '--jitless', script],
      { encoding: 'utf8', timeout: 540_000 },
    );
    expect(r.stdout).toMatch(/memcheck: \d+ calls/);
    expect(r.stderr).toMatch(/ERROR SUMMARY: 0 errors/);
    expect(r.status).toBe(0);
  });
});
