/**
 * The private plaintext directory (Node-only): where the agent puts unsealed inputs and where the
 * workload writes outputs before they are sealed. It lives on a memory file system (tmpfs or ramfs,
 * /dev/shm by default) so plaintext never reaches a disk, is mode 0700 with 0600 files, and is wiped —
 * every file overwritten with zeros, then unlinked — on every exit path the process can see: a normal
 * end, a thrown error, an uncaught exception (all three pass through the process `exit` event), and
 * SIGINT/SIGTERM/SIGHUP (whose handlers the command installs; see `onTerminationSignal`). SIGKILL
 * cannot be caught: the directory then stays in memory until reboot, still mode 0700.
 */
import {
  closeSync,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  rmdirSync,
  rmSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { chmod, mkdtemp, readFile, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from './kbs.js';

export const DEFAULT_PRIVATE_PARENT = '/dev/shm';
/** File systems whose pages never go to a disk (swap aside, which a TEE guest should not have). */
export const MEMORY_FILESYSTEMS = ['tmpfs', 'ramfs'];

/** /proc/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** The mount holding `path` (already resolved) according to /proc/mounts text: the longest prefix wins. */
export function mountOf(path: string, mounts: string): { mountPoint: string; fsType: string } | undefined {
  let best: { mountPoint: string; fsType: string } | undefined;
  for (const line of mounts.split('\n')) {
    const f = line.split(' ');
    if (f.length < 3) continue;
    const mountPoint = unescapeMount(f[1]!);
    const inside =
      mountPoint === '/' ||
      path === mountPoint ||
      path.startsWith(mountPoint.endsWith('/') ? mountPoint : `${mountPoint}/`);
    // Later lines are mounted over earlier ones at the same point.
    if (inside && (!best || mountPoint.length >= best.mountPoint.length))
      best = { mountPoint, fsType: f[2]! };
  }
  return best;
}

export async function filesystemOf(
  path: string,
  mountsFile = '/proc/mounts',
): Promise<{ mountPoint: string; fsType: string } | undefined> {
  let mounts: string;
  try {
    mounts = await readFile(mountsFile, 'utf8');
  } catch {
    return undefined;
  }
  return mountOf(await realpath(path), mounts);
}

export interface PrivateDirOptions {
  /** Where to create it; default /dev/shm. */
  parent?: string;
  /** Accept a parent that is not on tmpfs/ramfs (plaintext may then reach a disk). */
  allowDisk?: boolean;
  /** For tests: the mount table to read instead of /proc/mounts. */
  mountsFile?: string;
  /** Warnings for the operator (one line each). */
  warn?: (line: string) => void;
}

const live = new Set<PrivateDir>();
let exitHookInstalled = false;

/** Overwrites a file's bytes with zeros, then unlinks it; never follows a symbolic link. */
export function zeroAndUnlink(path: string): void {
  try {
    const st = lstatSync(path);
    if (st.isFile()) {
      const fd = openSync(path, 'r+');
      try {
        const size = fstatSync(fd).size;
        const zeros = new Uint8Array(Math.min(size, 1 << 20));
        for (let o = 0; o < size; ) o += writeSync(fd, zeros, 0, Math.min(zeros.length, size - o), o);
      } finally {
        closeSync(fd);
      }
    }
  } finally {
    unlinkSync(path);
  }
}

function wipeTree(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    try {
      if (e.isDirectory()) wipeTree(p);
      else zeroAndUnlink(p);
    } catch {
      // Best effort per entry: the rmSync below still removes whatever could not be zeroed.
    }
  }
  rmdirSync(dir);
}

export class PrivateDir {
  private wiped = false;
  private constructor(readonly path: string) {}

  static async create(o: PrivateDirOptions = {}): Promise<PrivateDir> {
    const parent = o.parent ?? DEFAULT_PRIVATE_PARENT;
    let fs: Awaited<ReturnType<typeof filesystemOf>>;
    try {
      fs = await filesystemOf(parent, o.mountsFile);
    } catch (e) {
      throw new AgentError(
        'private-dir',
        `cannot use ${parent} for the private directory: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
    if (!fs || !MEMORY_FILESYSTEMS.includes(fs.fsType)) {
      const what = fs
        ? `${parent} is on ${fs.fsType} (mounted at ${fs.mountPoint}), not tmpfs or ramfs`
        : `the file system of ${parent} is unknown (no /proc/mounts)`;
      if (!o.allowDisk) {
        throw new AgentError(
          'private-dir-on-disk',
          `${what}: plaintext could reach a disk. Choose a memory file system (--private-dir /dev/shm) or accept the risk with --allow-disk`,
        );
      }
      o.warn?.(`WARNING: ${what}; plaintext may be written to disk (--allow-disk)`);
    }
    const path = await mkdtemp(join(parent, 'cloister-'));
    await chmod(path, 0o700);
    const dir = new PrivateDir(path);
    live.add(dir);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      // Normal ends, thrown errors and uncaught exceptions all pass through here.
      process.on('exit', wipeAllPrivateDirs);
    }
    return dir;
  }

  /** Zeroes and removes everything; safe to call more than once. */
  wipe(): void {
    if (this.wiped) return;
    this.wiped = true;
    live.delete(this);
    try {
      wipeTree(this.path);
    } catch {
      rmSync(this.path, { recursive: true, force: true });
    }
  }
}

/** Wipes every private directory of this process (exit and signal paths). */
export function wipeAllPrivateDirs(): void {
  for (const d of [...live]) d.wipe();
}

/**
 * Calls `handler` on SIGINT, SIGTERM or SIGHUP instead of Node's default (which would end the process
 * without an `exit` event, so without a wipe). The handler must end the process itself.
 */
export function onTerminationSignal(handler: (signal: NodeJS.Signals) => void): () => void {
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, handler);
  return () => {
    for (const s of signals) process.off(s, handler);
  };
}
