import { spawnSync } from 'node:child_process';
import { linkSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mountOf, PrivateDir } from '../../src/agent/private-dir.js';
import { entries, shmParent, tempDir } from './helpers.js';

const MOUNTS = [
  'overlay / overlay rw 0 0',
  'tmpfs /dev/shm tmpfs rw 0 0',
  'tmpfs /run tmpfs rw 0 0',
  '/dev/sda1 /run/data ext4 rw 0 0',
  '/dev/sdb1 /mnt/with\\040space xfs rw 0 0',
].join('\n');

describe('mountOf', () => {
  it('the longest mount point containing the path wins', () => {
    expect(mountOf('/dev/shm/x', MOUNTS)).toEqual({ mountPoint: '/dev/shm', fsType: 'tmpfs' });
    expect(mountOf('/run/data/x', MOUNTS)?.fsType).toBe('ext4');
    expect(mountOf('/run/database', MOUNTS)?.fsType).toBe('tmpfs');
    expect(mountOf('/home/u', MOUNTS)?.fsType).toBe('overlay');
    expect(mountOf('/mnt/with space/a', MOUNTS)?.fsType).toBe('xfs');
  });
});

describe('PrivateDir', () => {
  it('is 0700 on tmpfs; wipe overwrites file contents with zeros before unlinking', async () => {
    const parent = shmParent();
    try {
      const d = await PrivateDir.create({ parent });
      expect(statSync(d.path).mode & 0o777).toBe(0o700);
      mkdirSync(join(d.path, 'sub'));
      const secret = join(d.path, 'sub', 'weights.bin');
      writeFileSync(secret, 'TOP SECRET WEIGHTS', { mode: 0o600 });
      symlinkSync('/etc/hostname', join(d.path, 'link'));
      // A second name for the same inode (outside the directory) shows what the wipe did to the bytes.
      const witness = join(parent, 'witness');
      linkSync(secret, witness);
      d.wipe();
      expect(entries(parent)).toEqual(['witness']);
      expect(readFileSync(witness)).toEqual(Buffer.alloc(18));
      // The symbolic link was removed, not followed.
      expect(readFileSync('/etc/hostname').length).toBeGreaterThan(0);
      d.wipe();
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('refuses a directory on a disk file system unless allowed, with the reason', async () => {
    const mounts = join(tempDir(), 'mounts');
    writeFileSync(mounts, MOUNTS.replace('tmpfs /dev/shm tmpfs', '/dev/sda2 /dev/shm ext4'));
    const parent = shmParent();
    try {
      await expect(PrivateDir.create({ parent, mountsFile: mounts })).rejects.toThrow(
        /is on ext4 \(mounted at \/dev\/shm\), not tmpfs or ramfs: plaintext could reach a disk/,
      );
      const warned: string[] = [];
      const d = await PrivateDir.create({
        parent,
        mountsFile: mounts,
        allowDisk: true,
        warn: (l) => warned.push(l),
      });
      expect(warned[0]).toMatch(/^WARNING: .* plaintext may be written to disk/);
      d.wipe();
      await expect(PrivateDir.create({ parent, mountsFile: join(tempDir(), 'none') })).rejects.toThrow(
        /file system of .* is unknown/,
      );
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('is wiped on process exit paths: normal end, uncaught exception, process.exit', () => {
    const mod = new URL('../../dist/agent/private-dir.js', import.meta.url).pathname;
    for (const ending of ['', 'throw new Error("boom");', 'process.exit(7);']) {
      const parent = shmParent();
      try {
        const script = `import { PrivateDir } from ${JSON.stringify(mod)};
const d = await PrivateDir.create({ parent: ${JSON.stringify(parent)} });
(await import('node:fs')).writeFileSync(d.path + '/f', 'secret');
${ending}`;
        const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(ending.includes('exit') ? 7 : ending ? 1 : 0);
        expect(entries(parent)).toEqual([]);
      } finally {
        rmSync(parent, { recursive: true, force: true });
      }
    }
  });
});
