/**
 * The private plaintext directory (Node-only): where the agent puts unsealed inputs and where the
 * workload writes outputs before they are sealed. It lives on a memory file system (tmpfs or ramfs,
 * /dev/shm by default) so plaintext never reaches a disk, is mode 0700 with 0600 files, and is wiped —
 * every file overwritten with zeros, then unlinked — on every exit path the process can see: a normal
 * end, a thrown error, an uncaught exception (all three pass through the process `exit` event), and
 * SIGINT/SIGTERM/SIGHUP (whose handlers the command installs; see `onTerminationSignal`). SIGKILL
 * cannot be caught: for that, the directory's name says which process owns it (pid, start time, boot,
 * pid namespace),
 * and every `PrivateDir.create` first wipes the directories in its parent whose owner is no longer
 * running — never one whose owner still is.
 *
 * The wipe never follows a symbolic link: a workload (or a process it left behind) may swap a file or
 * a directory for a link while the agent walks the tree, so every step opens with O_NOFOLLOW and names
 * below a directory are looked up through its open descriptor (confined.ts).
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  rmdirSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { chmod, lstat, mkdtemp, readdir, readFile, readlink, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { anchorOf } from './confined.js';
import { DEFAULT_PRIVATE_PARENT } from './defaults.js';
import { AgentError } from './keys.js';

const { O_RDONLY, O_RDWR, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = constants;

export { DEFAULT_PRIVATE_PARENT };
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
  /** For tests: where to read processes, the boot id and the pid namespace instead of /proc. */
  procDir?: string;
  /** Warnings for the operator (one line each). */
  warn?: (line: string) => void;
}

const live = new Set<PrivateDir>();
let exitHookInstalled = false;

/** Overwrites a regular file's bytes with zeros (never through a link, never a device), then unlinks it. */
export function zeroAndUnlink(path: string): void {
  try {
    if (lstatSync(path).isFile()) zeroFile(path);
  } finally {
    unlinkSync(path);
  }
}

function zeroFile(path: string): void {
  let fd: number;
  try {
    // Swapped for a link since the lstat: ELOOP, and the unlink removes the link itself.
    fd = openSync(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') return;
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return;
    const size = st.size;
    const zeros = new Uint8Array(Math.min(size, 1 << 20));
    for (let o = 0; o < size; ) o += writeSync(fd, zeros, 0, Math.min(zeros.length, size - o), o);
  } finally {
    closeSync(fd);
  }
}

/** Zeroes and removes the tree at `path`, which must be a directory (a link there is not followed). */
function wipeTree(path: string): void {
  const fd = openSync(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  try {
    const at = anchorOf(fd, path);
    for (const e of readdirSync(at, { withFileTypes: true })) {
      const p = `${at}/${e.name}`;
      try {
        if (e.isDirectory()) wipeTree(p);
        else zeroAndUnlink(p);
      } catch {
        // Best effort per entry (it may have been swapped for a link): once more, whatever is there
        // now; what cannot be removed makes the rmdir below fail.
        try {
          wipeAgain(p);
        } catch {}
      }
    }
  } finally {
    closeSync(fd);
  }
  rmdirSync(path);
}

/**
 * Wipes what is at `path` now, looked at afresh and never followed: a directory as a tree, anything
 * else (a file, a link, a FIFO) zeroed if it is a regular file and unlinked. Never Node's recursive
 * rm, which reads a directory by its path after checking it: one swapped for a link in between has
 * the link's target emptied (as root, anywhere).
 */
function wipeAgain(path: string): void {
  if (lstatSync(path).isDirectory()) wipeTree(path);
  else zeroAndUnlink(path);
}

/**
 * Who made a private directory: a process is named by its pid and start time, within one boot and one
 * pid namespace.
 */
interface Owner {
  pid: number;
  /** Field 22 of /proc/<pid>/stat: clock ticks after boot. */
  start: string;
  /** The first 8 hex digits of the boot id. */
  boot: string;
  /** The inode of the pid namespace: a pid means something only within its namespace. */
  ns: string;
}

/** cloister-<pid>-<start>-<boot>-<ns>-XXXXXX (mkdtemp's six characters). */
const OWNED_NAME = /^cloister-(\d+)-(\d+)-([0-9a-f]{8})-(\d+)-[A-Za-z0-9]{6}$/;

/**
 * The start time of `pid` as `proc` shows it, or undefined when no such process is running (a zombie
 * has ended). Any other failure to read it throws: it says nothing about whether the process runs.
 */
async function startTimeOf(proc: string, pid: number): Promise<string | undefined> {
  let stat: string;
  try {
    stat = await readFile(`${proc}/${pid}/stat`, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return undefined;
    throw e;
  }
  // "pid (comm) state …": comm may hold spaces and parentheses, so count from the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[0] === 'Z' || fields[0] === 'X' ? undefined : fields[19];
}

async function bootId(proc: string): Promise<string | undefined> {
  try {
    return (await readFile(`${proc}/sys/kernel/random/boot_id`, 'utf8')).replaceAll('-', '').slice(0, 8);
  } catch {
    return undefined;
  }
}

/**
 * This process as an owner, or why it cannot be named (then nothing is swept). `proc` must be this pid
 * namespace's: one mounted for another (a process moved into a new pid namespace without a /proc of
 * its own) shows other processes under this process's pid, so a name made from it would follow an
 * unrelated process, and a live agent's directory would be wiped once that process ended.
 */
async function selfOwner(proc: string): Promise<Owner | string> {
  const seen = await readlink(`${proc}/self`).catch(() => undefined);
  if (seen === undefined) return `no ${proc}`;
  if (seen !== String(process.pid))
    return `${proc} is another pid namespace's (it shows this process as ${seen}, not ${process.pid})`;
  const [start, boot, ns] = await Promise.all([
    startTimeOf(proc, process.pid).catch(() => undefined),
    bootId(proc),
    readlink(`${proc}/self/ns/pid`).then(
      (l) => /^pid:\[(\d+)\]$/.exec(l)?.[1],
      () => undefined,
    ),
  ]);
  return start && boot && ns && /^[0-9a-f]{8}$/.test(boot)
    ? { pid: process.pid, start, boot, ns }
    : `${proc} does not show this process's start time, boot id and pid namespace`;
}

/**
 * Whether the owner may still be running. Another boot: no. Another pid namespace (a container
 * sharing the parent): its pids cannot be looked up from here, so it is taken as running; so is one
 * whose entry in /proc cannot be read.
 */
async function mayBeRunning(proc: string, o: Owner, self: Owner): Promise<boolean> {
  if (o.boot !== self.boot) return false;
  if (o.ns !== self.ns) return true;
  try {
    return (await startTimeOf(proc, o.pid)) === o.start;
  } catch {
    return true;
  }
}

/**
 * Wipes the private directories in `parent` left by processes that are no longer running (SIGKILL,
 * a crash of the VM's user space): only ours (same user, a real directory, an owner name), and never
 * one whose owner may still run.
 */
async function sweep(
  proc: string,
  parent: string,
  self: Owner,
  warn?: (line: string) => void,
): Promise<void> {
  let names: string[];
  try {
    names = await readdir(parent);
  } catch (e) {
    warn?.(
      `WARNING: cannot list ${parent} for private directories left by killed agents: ${(e as NodeJS.ErrnoException).code}`,
    );
    return;
  }
  for (const name of names) {
    const m = OWNED_NAME.exec(name);
    if (!m) continue;
    const owner: Owner = { pid: Number(m[1]), start: m[2]!, boot: m[3]!, ns: m[4]! };
    if (await mayBeRunning(proc, owner, self)) continue;
    const path = join(parent, name);
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isDirectory() || st.uid !== process.getuid?.()) continue;
    try {
      wipeTree(path);
      warn?.(`wiped ${path}, left by process ${owner.pid}, which is no longer running`);
    } catch (e) {
      // Another agent starting at the same time may have wiped it first.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') warn?.(`WARNING: could not wipe ${path}, left by process ${owner.pid}: ${code}`);
    }
  }
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
    const proc = o.procDir ?? '/proc';
    const self = await selfOwner(proc);
    if (typeof self !== 'string') await sweep(proc, parent, self, o.warn);
    else
      o.warn?.(
        `WARNING: ${self}: the private directory cannot name its owner, so one left by a killed agent is not wiped at the next start`,
      );
    const prefix =
      typeof self !== 'string' ? `cloister-${self.pid}-${self.start}-${self.boot}-${self.ns}-` : 'cloister-';
    const path = await mkdtemp(join(parent, prefix));
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
      // Once more (an entry made again meanwhile, or a link in the directory's place); gone is fine.
      try {
        wipeAgain(this.path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
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
