/**
 * Directories the agent writes into or reads from on behalf of someone it does not trust (Node-only):
 * the output directory (host storage, where the host may plant links) and the private outputs
 * directory (filled by the workload). The directory named by the operator is resolved once and opened;
 * every name below it is then looked up through that open descriptor (`/proc/self/fd/N/name`, the
 * openat(2) of Node), one component at a time, never following a symbolic link (O_NOFOLLOW), so
 * neither a link planted beforehand nor one swapped in between a check and a write can lead outside.
 * Files are created with O_CREAT|O_EXCL|O_NOFOLLOW under a temporary name and renamed into place;
 * rename(2) replaces a link at the target rather than following it.
 *
 * Without /proc (not Linux) names are looked up by the directory's real path instead: the last
 * component is still never followed, but a directory swapped for a link between two steps is not seen.
 */
import { randomBytes } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readdir, realpath, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from './keys.js';

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY, O_NONBLOCK } = constants;

/** Where the kernel resolves names relative to an open descriptor, if this system has it. */
const FD_ROOT = existsSync('/proc/self/fd') ? '/proc/self/fd' : undefined;

/** The path through which names inside the directory open as `fd` (real path `real`) are looked up. */
export function anchorOf(fd: number, real: string): string {
  return FD_ROOT ? `${FD_ROOT}/${fd}` : real;
}

/** The codes of the refusals below. */
export type ConfinedCode = 'symbolic-link' | 'not-a-directory' | 'not-a-file' | 'bad-output-name';

function refusal(code: ConfinedCode, shown: string, why: string): AgentError {
  return new AgentError(code, `refusing ${shown}: ${why}`);
}

/** The components of a relative path; "", "." and ".." are refused (they would leave or alias the directory). */
function componentsOf(rel: string, shown: string): string[] {
  const parts = rel.split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..'))
    throw refusal('bad-output-name', shown, 'the name leaves the directory');
  return parts;
}

/** Why `path` could not be opened as a directory without following a link. */
async function notDirectory(path: string, shown: string, e: unknown): Promise<never> {
  const code = (e as NodeJS.ErrnoException).code;
  if (code !== 'ENOTDIR' && code !== 'ELOOP') throw e;
  const st = await lstat(path);
  if (st.isSymbolicLink()) throw refusal('symbolic-link', shown, 'it is a symbolic link');
  throw refusal('not-a-directory', shown, 'it is not a directory');
}

export class ConfinedDir {
  private constructor(
    private readonly fh: FileHandle,
    /** The path as the operator knows it, for messages. */
    readonly shown: string,
    private readonly real: string,
  ) {}

  /**
   * Opens the directory the operator named; `create` makes it first when missing. The directory
   * itself must not be a link (the host could have planted one where the operator expects a
   * directory); links above it are the operator's own file system layout, and are followed.
   */
  static async open(path: string, create = false): Promise<ConfinedDir> {
    if (create) {
      // A dangling link there fails it (EEXIST, or ENOENT from Node's recursive mkdir) and makes
      // nothing; the open below then says what is there.
      await mkdir(path, { recursive: true }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST' && e.code !== 'ENOENT') throw e;
      });
    }
    let fh: FileHandle;
    try {
      fh = await open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    } catch (e) {
      return notDirectory(path, path, e);
    }
    try {
      return new ConfinedDir(fh, path, await realpath(path));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  private at(name: string): string {
    return `${anchorOf(this.fh.fd, this.real)}/${name}`;
  }

  private show(rel: string): string {
    return join(this.shown, rel);
  }

  /** The child directory `name`, opened without following a link; made first (mode per umask) when `create`. */
  private async child(name: string, create: boolean): Promise<ConfinedDir | undefined> {
    if (create) {
      try {
        await mkdir(this.at(name));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    let fh: FileHandle;
    try {
      fh = await open(this.at(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    } catch (e) {
      if (!create && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return notDirectory(this.at(name), this.show(name), e);
    }
    return new ConfinedDir(fh, this.show(name), join(this.real, name));
  }

  /**
   * The directory `rel` ("a/b") below this one, walked one component at a time without following links;
   * missing ones are made when `create`, else the answer is undefined. Close it when done (unless it is
   * this directory itself, for rel "" or ".").
   */
  async subdir(rel: string, create: boolean): Promise<ConfinedDir | undefined> {
    if (rel === '' || rel === '.') return this;
    let dir: ConfinedDir = this;
    for (const name of componentsOf(rel, this.show(rel))) {
      const parent = dir;
      let next: ConfinedDir | undefined;
      try {
        next = await parent.child(name, create);
      } finally {
        if (parent !== this) await parent.close();
      }
      if (!next) return undefined;
      dir = next;
    }
    return dir;
  }

  /**
   * Refuses, before anything is written, a target `rel` that a write could not safely replace: a link
   * (or a non-directory) on the way, a link or a directory at the end.
   */
  async checkTarget(rel: string): Promise<void> {
    const parts = componentsOf(rel, this.show(rel));
    const name = parts.pop()!;
    const dir = await this.subdir(parts.join('/'), false);
    if (!dir) return;
    try {
      await dir.checkName(name);
    } finally {
      if (dir !== this) await dir.close();
    }
  }

  private async checkName(name: string): Promise<void> {
    const st = await lstat(this.at(name)).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (st?.isSymbolicLink()) throw refusal('symbolic-link', this.show(name), 'it is a symbolic link');
    if (st?.isDirectory()) throw refusal('not-a-file', this.show(name), 'it is a directory');
  }

  /**
   * Writes `name` in this directory: `write` fills a new file (O_EXCL, never a link, mode `mode`) under
   * a temporary name, which is renamed over `name` once complete; on any failure (a link found at
   * `name` included) the temporary file is removed and nothing else has changed.
   */
  async writeFile(name: string, mode: number, write: (fh: FileHandle) => Promise<void>): Promise<void> {
    await this.checkName(name);
    const tmp = `.${name}.${randomBytes(6).toString('hex')}.tmp`;
    const fh = await open(this.at(tmp), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    let closed = false;
    try {
      await write(fh);
      closed = true;
      await fh.close();
      await rename(this.at(tmp), this.at(name));
    } catch (e) {
      if (!closed) await fh.close().catch(() => {});
      await rm(this.at(tmp), { force: true });
      throw e;
    }
  }

  /** Removes the file `rel` if it is there; a link there is removed itself, never followed. */
  async remove(rel: string): Promise<void> {
    const parts = componentsOf(rel, this.show(rel));
    const name = parts.pop()!;
    const dir = await this.subdir(parts.join('/'), false);
    if (!dir) return;
    try {
      await rm(dir.at(name), { force: true });
    } finally {
      if (dir !== this) await dir.close();
    }
  }

  /** Opens the regular file `rel` for reading, never through a link (O_NOFOLLOW on every component). */
  async openFile(rel: string): Promise<FileHandle> {
    const parts = componentsOf(rel, this.show(rel));
    const name = parts.pop()!;
    const dir = await this.subdir(parts.join('/'), false);
    if (!dir) throw refusal('not-a-file', this.show(rel), 'it does not exist');
    try {
      let fh: FileHandle;
      try {
        // O_NONBLOCK: a FIFO put in place of the file must not block the agent.
        fh = await open(dir.at(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ELOOP')
          throw refusal('symbolic-link', this.show(rel), 'it is a symbolic link');
        throw e;
      }
      if (!(await fh.stat()).isFile()) {
        await fh.close();
        throw refusal('not-a-file', this.show(rel), 'it is not a regular file');
      }
      return fh;
    } finally {
      if (dir !== this) await dir.close();
    }
  }

  /**
   * Every regular file below this directory, as "a/b" paths; links and other non-regular entries are
   * reported to `skipped` and not descended into.
   */
  async listFiles(skipped: (rel: string, why: string) => void): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: ConfinedDir, prefix: string): Promise<void> => {
      for (const e of await readdir(anchorOf(dir.fh.fd, dir.real), { withFileTypes: true })) {
        const rel = prefix + e.name;
        if (e.isDirectory()) {
          let sub: ConfinedDir | undefined;
          try {
            sub = await dir.child(e.name, false);
          } catch (err) {
            // Replaced since it was listed.
            if (!(err instanceof AgentError)) throw err;
            skipped(rel, err.code === 'symbolic-link' ? 'a symbolic link' : 'not a regular file');
            continue;
          }
          if (!sub) continue;
          try {
            await walk(sub, `${rel}/`);
          } finally {
            await sub.close();
          }
        } else if (e.isFile()) out.push(rel);
        else skipped(rel, e.isSymbolicLink() ? 'a symbolic link' : 'not a regular file');
      }
    };
    await walk(this, '');
    return out.sort();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
