import { execFileSync } from 'node:child_process';
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfinedDir } from '../../src/tee/confined.js';
import { tempDir } from './helpers.js';

let work: string;
let out: string;
/** Where a planted link points: must be left exactly as it was. */
let elsewhere: string;
let dir: ConfinedDir;

beforeEach(async () => {
  work = tempDir();
  out = join(work, 'out');
  elsewhere = join(work, 'elsewhere');
  mkdirSync(elsewhere);
  writeFileSync(join(elsewhere, 'victim'), 'untouched');
  dir = await ConfinedDir.open(out, true);
});
afterEach(async () => {
  await dir.close();
  rmSync(work, { recursive: true, force: true });
});

const write = (name: string, text: string) => dir.writeFile(name, 0o644, (fh) => fh.writeFile(text));

describe('ConfinedDir', () => {
  it('writes a file (replacing a regular one) through a temporary name; nothing else is left', async () => {
    await write('a.json', 'one');
    await write('a.json', 'two');
    expect(readFileSync(join(out, 'a.json'), 'utf8')).toBe('two');
    expect(readdirSync(out)).toEqual(['a.json']);
  });

  it('refuses a symbolic link at the target, naming it; the link and its target are left alone', async () => {
    symlinkSync(join(elsewhere, 'victim'), join(out, 'run-receipt.json'));
    const refused = {
      code: 'symbolic-link',
      message: `refusing ${out}/run-receipt.json: it is a symbolic link`,
    };
    await expect(dir.checkTarget('run-receipt.json')).rejects.toMatchObject(refused);
    await expect(write('run-receipt.json', 'forged')).rejects.toMatchObject(refused);
    expect(readFileSync(join(elsewhere, 'victim'), 'utf8')).toBe('untouched');
    expect(readdirSync(out)).toEqual(['run-receipt.json']);
  });

  it('refuses a symbolic link on the way to a subdirectory; nothing is made through it', async () => {
    symlinkSync(elsewhere, join(out, 'sub'));
    const refused = { code: 'symbolic-link', message: `refusing ${out}/sub: it is a symbolic link` };
    await expect(dir.subdir('sub/deeper', true)).rejects.toMatchObject(refused);
    await expect(dir.checkTarget('sub/x.sealed')).rejects.toMatchObject(refused);
    expect(readdirSync(elsewhere)).toEqual(['victim']);
    writeFileSync(join(out, 'file'), '');
    await expect(dir.subdir('file/x', true)).rejects.toMatchObject({ code: 'not-a-directory' });
  });

  it('a link swapped in while the file is written is replaced by rename, never followed', async () => {
    await dir.writeFile('r.json', 0o644, async (fh) => {
      // After the check, before the rename: the host plants a link at the target.
      symlinkSync(join(elsewhere, 'victim'), join(out, 'r.json'));
      await fh.writeFile('receipt');
    });
    expect(readFileSync(join(out, 'r.json'), 'utf8')).toBe('receipt');
    expect(readFileSync(join(elsewhere, 'victim'), 'utf8')).toBe('untouched');
  });

  it('a directory swapped for a link after it was made is not written into', async () => {
    const sub = (await dir.subdir('sub', true))!;
    try {
      // The open descriptor still names the directory that was checked, wherever the name now points.
      rmSync(join(out, 'sub'), { recursive: true });
      symlinkSync(elsewhere, join(out, 'sub'));
      await expect(sub.writeFile('x', 0o644, (fh) => fh.writeFile('x'))).rejects.toMatchObject({
        code: 'ENOENT',
      });
    } finally {
      await sub.close();
    }
    expect(readdirSync(elsewhere)).toEqual(['victim']);
  });

  it('the directory named must not itself be a link (links above it are followed)', async () => {
    const link = join(work, 'out-link');
    symlinkSync(elsewhere, link);
    await expect(ConfinedDir.open(link, true)).rejects.toMatchObject({
      code: 'symbolic-link',
      message: `refusing ${link}: it is a symbolic link`,
    });
    await expect(ConfinedDir.open(join(elsewhere, 'victim'))).rejects.toMatchObject({
      code: 'not-a-directory',
    });
    // A dangling link is not made into a directory either.
    const dangling = join(work, 'dangling');
    symlinkSync(join(elsewhere, 'made-by-link'), dangling);
    await expect(ConfinedDir.open(dangling, true)).rejects.toMatchObject({ code: 'symbolic-link' });
    const below = await ConfinedDir.open(join(link, 'made'), true);
    await below.close();
    expect(readdirSync(elsewhere).sort()).toEqual(['made', 'victim']);
  });

  it('refuses names that leave the directory, and a directory as a file target', async () => {
    await expect(dir.checkTarget('../x')).rejects.toMatchObject({ code: 'bad-output-name' });
    await expect(dir.subdir('a//b', true)).rejects.toMatchObject({ code: 'bad-output-name' });
    mkdirSync(join(out, 'd'));
    await expect(write('d', 'x')).rejects.toMatchObject({ code: 'not-a-file', message: /is a directory/ });
  });

  it('reads only regular files, through no link; lists files and reports the rest', async () => {
    mkdirSync(join(out, 'sub'));
    writeFileSync(join(out, 'sub', 'real.txt'), 'mine');
    symlinkSync(join(elsewhere, 'victim'), join(out, 'link.txt'));
    symlinkSync(elsewhere, join(out, 'linkdir'));
    execFileSync('mkfifo', [join(out, 'fifo')]);
    const skipped: string[] = [];
    expect(await dir.listFiles((rel, why) => skipped.push(`${rel}: ${why}`))).toEqual(['sub/real.txt']);
    expect(skipped.sort()).toEqual([
      'fifo: not a regular file',
      'link.txt: a symbolic link',
      'linkdir: a symbolic link',
    ]);
    const fh = await dir.openFile('sub/real.txt');
    expect(await fh.readFile('utf8')).toBe('mine');
    await fh.close();
    await expect(dir.openFile('link.txt')).rejects.toMatchObject({ code: 'symbolic-link' });
    await expect(dir.openFile('linkdir/victim')).rejects.toMatchObject({ code: 'symbolic-link' });
    // A FIFO in place of a file neither blocks the agent nor is read.
    await expect(dir.openFile('fifo')).rejects.toMatchObject({ code: 'not-a-file' });
    unlinkSync(join(out, 'fifo'));
  });
});
