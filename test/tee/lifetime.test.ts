import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findProgram, parentDeathWrapper } from '../../src/tee/lifetime.js';
import { tempDir } from './helpers.js';

describe('findProgram', () => {
  it('finds a program along PATH or by its path; a missing or non-executable one is a clear error', async () => {
    const dir = tempDir();
    try {
      const script = join(dir, 'tool');
      writeFileSync(script, '#!/bin/sh\n');
      await expect(findProgram('tool', `/nonexistent:${dir}`)).rejects.toMatchObject({
        code: 'spawn-failed',
        message: 'cannot run tool: EACCES',
      });
      chmodSync(script, 0o755);
      expect(await findProgram('tool', `/nonexistent:${dir}`)).toBe(script);
      expect(await findProgram(script, '')).toBe(script);
      await expect(findProgram('no-such-tool', dir)).rejects.toThrow('cannot run no-such-tool: ENOENT');
      await expect(findProgram(dir, '')).rejects.toThrow(`cannot run ${dir}: ENOENT`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('parentDeathWrapper', () => {
  it("wraps the workload in util-linux's setpriv --pdeathsig KILL", async () => {
    const w = await parentDeathWrapper('/usr/bin:/bin');
    expect(w).toEqual({ wrapper: [expect.stringMatching(/\/setpriv$/), '--pdeathsig', 'KILL', '--'] });
  });

  it('says why there is none: setpriv missing, or one without --pdeathsig', async () => {
    const dir = tempDir();
    try {
      expect(await parentDeathWrapper(dir)).toEqual({ unavailable: 'setpriv (util-linux) is not installed' });
      // An old setpriv refuses the option it does not know.
      writeFileSync(join(dir, 'setpriv'), '#!/bin/sh\necho "setpriv: unrecognized option" >&2; exit 1\n', {
        mode: 0o755,
      });
      expect(await parentDeathWrapper(dir)).toEqual({
        unavailable: `${join(dir, 'setpriv')} does not support --pdeathsig (util-linux 2.33 or later does)`,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
