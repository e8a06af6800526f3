import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readText, UsageError } from '../../src/cli/io.js';

describe('cli io', () => {
  it('readText returns the file as text', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cloister-io-'));
    await writeFile(join(dir, 'p.json'), '{"allowDebug":false}');
    expect(await readText(join(dir, 'p.json'), 'policy')).toBe('{"allowDebug":false}');
  });

  it('an unreadable file is a usage error naming what it was meant to be', async () => {
    const missing = join(tmpdir(), 'cloister-io-does-not-exist', 'k.jwk');
    const e = await readText(missing, 'EAR key').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toMatch(new RegExp(`^cannot read EAR key ${missing}: ENOENT`));
  });
});
