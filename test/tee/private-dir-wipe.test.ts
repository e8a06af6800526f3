/**
 * The wipe when an entry's first attempt fails (it was swapped for a link, or a descriptor could not be
 * had): node:fs is wrapped so that a failure can be staged at one exact step, and so that every removal
 * the wipe asks for is seen.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PrivateDir } from '../../src/tee/private-dir.js';
import { entries, shmParent, tempDir } from './helpers.js';

const stage = vi.hoisted(() => ({
  /** Called (once) in place of the first open of a directory whose path ends with `/${name}`. */
  beforeOpen: undefined as { name: string; run: () => void } | undefined,
  removals: [] as Array<{ path: string; recursive: boolean }>,
}));

vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  return {
    ...real,
    openSync(path: fs.PathLike, flags: fs.OpenMode, mode?: fs.Mode) {
      const s = stage.beforeOpen;
      if (
        s &&
        typeof flags === 'number' &&
        flags & real.constants.O_DIRECTORY &&
        String(path).endsWith(`/${s.name}`)
      ) {
        stage.beforeOpen = undefined;
        s.run();
      }
      return real.openSync(path, flags, mode);
    },
    rmSync(path: fs.PathLike, options?: fs.RmOptions) {
      stage.removals.push({ path: String(path), recursive: options?.recursive === true });
      return real.rmSync(path, options);
    },
  };
});

afterEach(() => {
  stage.beforeOpen = undefined;
  stage.removals = [];
});

describe('PrivateDir.wipe when an entry cannot be wiped at the first attempt', () => {
  it('a directory that could not be opened once is still zeroed, not just unlinked', async () => {
    const parent = shmParent();
    try {
      const d = await PrivateDir.create({ parent });
      fs.mkdirSync(join(d.path, 'sub'));
      fs.writeFileSync(join(d.path, 'sub', 'weights.bin'), 'TOP SECRET WEIGHTS');
      const witness = join(parent, 'witness');
      fs.linkSync(join(d.path, 'sub', 'weights.bin'), witness);
      stage.beforeOpen = {
        name: 'sub',
        run: () => {
          throw Object.assign(new Error('EMFILE: too many open files'), { code: 'EMFILE' });
        },
      };
      d.wipe();
      expect(stage.beforeOpen).toBeUndefined();
      expect(entries(parent)).toEqual(['witness']);
      expect(fs.readFileSync(witness)).toEqual(Buffer.alloc(18));
      expect(stage.removals.filter((r) => r.recursive)).toEqual([]);
    } finally {
      fs.rmSync(parent, { recursive: true, force: true });
    }
  });

  it('a directory swapped for a link is unlinked, its target untouched, and nothing is removed recursively', async () => {
    const parent = shmParent();
    const elsewhere = tempDir();
    try {
      fs.writeFileSync(join(elsewhere, 'victim'), 'keep');
      const d = await PrivateDir.create({ parent });
      fs.mkdirSync(join(d.path, 'sub'));
      fs.writeFileSync(join(d.path, 'sub', 'f'), 'secret');
      stage.beforeOpen = {
        name: 'sub',
        // Between the listing and the open, as a process left behind could do it.
        run: () => {
          fs.renameSync(join(d.path, 'sub'), join(parent, 'moved'));
          fs.symlinkSync(elsewhere, join(d.path, 'sub'));
        },
      };
      d.wipe();
      expect(stage.beforeOpen).toBeUndefined();
      expect(entries(parent).sort()).toEqual(['moved']);
      expect(fs.readFileSync(join(elsewhere, 'victim'), 'utf8')).toBe('keep');
      // Node's recursive rm reads a directory by path after checking it is one, so a swap in between
      // would have it empty the link's target: the wipe must never hand it a path.
      expect(stage.removals.filter((r) => r.recursive)).toEqual([]);
    } finally {
      fs.rmSync(parent, { recursive: true, force: true });
      fs.rmSync(elsewhere, { recursive: true, force: true });
    }
  });
});
