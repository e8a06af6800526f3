import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mountOf, PrivateDir } from '../../src/tee/private-dir.js';
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
    const mod = new URL('../../dist/tee/private-dir.js', import.meta.url).pathname;
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

  describe('the owner is read from a /proc of this pid namespace, and only a process known gone is taken as gone', () => {
    /** A /proc as `procDir` reads it: `self` names `selfPid`, whose entry says `start`. */
    function fakeProc(selfPid: number, start: string): string {
      const proc = tempDir();
      const stat = (pid: number) =>
        `${pid} (no de) S ${Array.from({ length: 18 }, () => '0').join(' ')} ${start} 0 0\n`;
      mkdirSync(join(proc, String(selfPid), 'ns'), { recursive: true });
      writeFileSync(join(proc, String(selfPid), 'stat'), stat(selfPid));
      symlinkSync('pid:[4026531836]', join(proc, String(selfPid), 'ns', 'pid'));
      symlinkSync(String(selfPid), join(proc, 'self'));
      mkdirSync(join(proc, 'sys', 'kernel', 'random'), { recursive: true });
      writeFileSync(
        join(proc, 'sys', 'kernel', 'random', 'boot_id'),
        '0123abcd-0000-4000-8000-000000000000\n',
      );
      return proc;
    }

    it('a /proc of another pid namespace names no owner and sweeps nothing (its pids are other processes)', async () => {
      const parent = shmParent();
      // This process is 4000001 in the namespace /proc belongs to; our own pid there is someone else.
      const proc = fakeProc(4_000_001, '99');
      try {
        const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').replaceAll('-', '').slice(0, 8);
        const ns = /\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0];
        // By the real /proc this owner is gone; by a /proc that is not ours nothing can be said.
        const other = `cloister-4194305-1-${boot}-${ns}-aaaaaa`;
        mkdirSync(join(parent, other));
        writeFileSync(join(parent, other, 'model.gguf'), 'PLAINTEXT WEIGHTS');
        const warned: string[] = [];
        const d = await PrivateDir.create({ parent, procDir: proc, warn: (l) => warned.push(l) });
        expect(readFileSync(join(parent, other, 'model.gguf'), 'utf8')).toBe('PLAINTEXT WEIGHTS');
        expect(d.path.split('/').pop()).toMatch(/^cloister-[A-Za-z0-9]{6}$/);
        expect(warned).toEqual([
          `WARNING: ${proc} is another pid namespace's (it shows this process as 4000001, not ${process.pid}): the private directory cannot name its owner, so one left by a killed agent is not wiped at the next start`,
        ]);
        d.wipe();
      } finally {
        rmSync(parent, { recursive: true, force: true });
        rmSync(proc, { recursive: true, force: true });
      }
    });

    it('an owner whose /proc entry cannot be read is taken as running; one with no entry is wiped', async () => {
      const parent = shmParent();
      const proc = fakeProc(process.pid, '42');
      try {
        // 777's entry is there but unreadable as a file (EISDIR); 778 has none.
        mkdirSync(join(proc, '777', 'stat'), { recursive: true });
        const unknown = 'cloister-777-5-0123abcd-4026531836-aaaaaa';
        const gone = 'cloister-778-5-0123abcd-4026531836-bbbbbb';
        for (const name of [unknown, gone]) {
          mkdirSync(join(parent, name));
          writeFileSync(join(parent, name, 'model.gguf'), 'PLAINTEXT WEIGHTS');
        }
        const warned: string[] = [];
        const d = await PrivateDir.create({ parent, procDir: proc, warn: (l) => warned.push(l) });
        expect(readFileSync(join(parent, unknown, 'model.gguf'), 'utf8')).toBe('PLAINTEXT WEIGHTS');
        expect(d.path.split('/').pop()).toMatch(
          new RegExp(`^cloister-${process.pid}-42-0123abcd-4026531836-[A-Za-z0-9]{6}$`),
        );
        expect(existsSync(join(parent, gone))).toBe(false);
        expect(warned).toEqual([
          `wiped ${join(parent, gone)}, left by process 778, which is no longer running`,
        ]);
        d.wipe();
      } finally {
        rmSync(parent, { recursive: true, force: true });
        rmSync(proc, { recursive: true, force: true });
      }
    });
  });

  describe('a directory left by a killed process is wiped at the next start (run and serve alike)', () => {
    const mod = new URL('../../dist/tee/private-dir.js', import.meta.url).pathname;
    /** A process that makes a private directory (as `cloister run` and `cloister serve` do), writes plaintext, prints the path and waits. */
    async function owner(parent: string) {
      const script = `import { PrivateDir } from ${JSON.stringify(mod)};
const d = await PrivateDir.create({ parent: ${JSON.stringify(parent)} });
(await import('node:fs')).writeFileSync(d.path + '/model.gguf', 'PLAINTEXT WEIGHTS');
process.stdout.write(d.path + '\\n');
setInterval(() => {}, 1000);`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      const path = await new Promise<string>((resolve, reject) => {
        child.stdout.on('data', (d) => {
          out += d;
          if (out.endsWith('\n')) resolve(out.trim());
        });
        child.once('exit', (code) => reject(new Error(`owner exited ${code}`)));
      });
      const gone = new Promise((resolve) => child.once('exit', resolve));
      return { child, path, gone };
    }

    it("after SIGKILL the next PrivateDir.create wipes it; a live owner's directory is left alone", async () => {
      const parent = shmParent();
      const live = await owner(parent);
      const killed = await owner(parent);
      try {
        expect(statSync(killed.path).mode & 0o777).toBe(0o700);
        killed.child.kill('SIGKILL');
        await killed.gone;
        expect(existsSync(join(killed.path, 'model.gguf'))).toBe(true);
        const warned: string[] = [];
        const d = await PrivateDir.create({ parent, warn: (l) => warned.push(l) });
        expect(warned).toEqual([
          `wiped ${killed.path}, left by process ${killed.child.pid}, which is no longer running`,
        ]);
        expect(existsSync(killed.path)).toBe(false);
        expect(readFileSync(join(live.path, 'model.gguf'), 'utf8')).toBe('PLAINTEXT WEIGHTS');
        d.wipe();
      } finally {
        live.child.kill('SIGKILL');
        await live.gone;
        rmSync(parent, { recursive: true, force: true });
      }
    }, 60_000);

    it('only our own directories: a link, a directory of another pid namespace or a foreign name is never followed or touched', async () => {
      const parent = shmParent();
      const elsewhere = tempDir();
      try {
        writeFileSync(join(elsewhere, 'victim'), 'keep');
        // A process that cannot be running: pid 2^22 + 1 is above Linux's pid_max.
        const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').replaceAll('-', '').slice(0, 8);
        const ns = /\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0];
        const dead = `cloister-4194305-1-${boot}-${ns}`;
        symlinkSync(elsewhere, join(parent, `${dead}-aaaaaa`));
        mkdirSync(join(parent, `${dead}-bbbbbb`));
        symlinkSync(join(elsewhere, 'victim'), join(parent, `${dead}-bbbbbb`, 'link'));
        // Another pid namespace (a container sharing the directory): its pids mean nothing here.
        const foreign = `cloister-4194305-1-${boot}-1-cccccc`;
        mkdirSync(join(parent, foreign));
        mkdirSync(join(parent, 'cloister-XyZ123'));
        const d = await PrivateDir.create({ parent });
        expect(entries(parent).sort()).toEqual(
          [`${dead}-aaaaaa`, foreign, 'cloister-XyZ123', d.path.split('/').pop()].sort(),
        );
        expect(readFileSync(join(elsewhere, 'victim'), 'utf8')).toBe('keep');
        d.wipe();
      } finally {
        rmSync(parent, { recursive: true, force: true });
        rmSync(elsewhere, { recursive: true, force: true });
      }
    });
  });
});
