import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const BIN = new URL('../../bin/cloister.js', import.meta.url).pathname;

export interface Result {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the built CLI as a separate process, as a user would; `stdout`: a file descriptor to write to. */
export function cloister(
  args: string[],
  opts: { cwd?: string; input?: Uint8Array; stdout?: number } = {},
): Result {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: opts.cwd,
    input: opts.input,
    maxBuffer: 1 << 30,
    ...(opts.stdout !== undefined ? { stdio: ['pipe', opts.stdout, 'pipe'] } : {}),
  });
  return { code: r.status, stdout: r.stdout ?? Buffer.alloc(0), stderr: r.stderr.toString() };
}

export function cloisterAsync(args: string[], opts: { cwd?: string } = {}) {
  return spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'cloister-test-'));
}

/**
 * A tmpfs of `kib` KiB, to run out of disk space for real; mounting needs root (CAP_SYS_ADMIN), so
 * elsewhere this gives the reason the tests that need it are skipped.
 */
export function smallTmpfs(kib: number): { dir: string; unmount(): void } | { skip: string } {
  const dir = tempDir();
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${kib}k,mode=0700`, 'tmpfs', dir]);
  if (r.status !== 0) {
    rmSync(dir, { recursive: true });
    return { skip: `cannot mount a ${kib} KiB tmpfs (needs root): ${r.error?.message ?? r.stderr}`.trim() };
  }
  return {
    dir,
    unmount() {
      spawnSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
