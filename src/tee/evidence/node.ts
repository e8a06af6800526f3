/**
 * The real file system and process runner for the attesters (Node-only; everything else in this
 * folder works on the `AgentFs` / `CommandRunner` interfaces so tests can stand in a fake kernel).
 */
import { execFile } from 'node:child_process';
import { access, mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import type { AgentFs, CommandRunner } from './fs.js';

export const nodeFs: AgentFs = {
  async readFile(path) {
    return new Uint8Array(await readFile(path));
  },
  async writeFile(path, data) {
    // One write(2) and close: configfs hands a binary attribute to the kernel on release.
    await writeFile(path, data);
  },
  async mkdir(path) {
    await mkdir(path);
  },
  async rmdir(path) {
    // Never recursive: configfs attribute files cannot be unlinked; rmdir alone drops the entry.
    await rmdir(path);
  },
  async readdir(path) {
    return readdir(path);
  },
  async exists(path) {
    try {
      await access(path);
      return true;
    } catch {
      return false;
    }
  },
};

export const nodeRunner: CommandRunner = (file, args, options = {}) =>
  new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { timeout: options.timeoutMs ?? 30_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (error, stdout, stderr) => {
        const e = error as (NodeJS.ErrnoException & { code?: unknown }) | null;
        if (e && typeof e.code === 'string') return reject(e);
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, stdout, stderr });
      },
    );
  });
