import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nodeFs, nodeRunner } from '../../../src/tee/evidence/node.js';
import { tempDir } from './helpers.js';

describe('nodeFs', () => {
  it('rmdir removes one empty directory and never recurses', async () => {
    const dir = path.join(tempDir(), 'entry');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'inblob'), 'x');
    await expect(nodeFs.rmdir(dir)).rejects.toMatchObject({ code: 'ENOTEMPTY' });
    expect(await nodeFs.exists(path.join(dir, 'inblob'))).toBe(true);
  });

  it('mkdir is not recursive and reports ENOENT for a missing parent', async () => {
    await expect(nodeFs.mkdir(path.join(tempDir(), 'a', 'b'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('nodeRunner', () => {
  it('returns the exit status and output, and rejects with ENOENT for a missing program', async () => {
    const ok = await nodeRunner(process.execPath, ['-e', 'console.log("hi"); process.exit(3)']);
    expect(ok).toEqual({ code: 3, stdout: 'hi\n', stderr: '' });
    await expect(nodeRunner(path.join(tempDir(), 'nvidia-smi'), [])).rejects.toMatchObject({
      code: 'ENOENT',
    });
  });
});
