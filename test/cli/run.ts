import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

export const BIN = new URL('../../bin/cloister.js', import.meta.url).pathname;

/**
 * How many times longer than on a quiet machine a test that spawns the CLI may take. Each spawn
 * starts Node and loads dist/ (under a second when quiet, several under load: other suites running
 * beside this one, a shared CI runner), and one test may spawn a dozen. CLOISTER_TEST_SLOWDOWN sets
 * it (a number ≥ 1, e.g. 4 under a debugger or emulation); otherwise it is the one-minute load
 * average per core when the test file loads, from 1 to 4.
 */
export const SLOWDOWN = slowdown(process.env.CLOISTER_TEST_SLOWDOWN);

function slowdown(env: string | undefined): number {
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!(Number.isFinite(n) && n >= 1))
      throw new Error(`CLOISTER_TEST_SLOWDOWN must be a number ≥ 1, not '${env}'`);
    return n;
  }
  return Math.min(4, Math.max(1, loadavg()[0]! / availableParallelism()));
}

/**
 * A timeout for a test, hook or wait that spawns the CLI: `quietMs`, what it needs on a quiet machine
 * with room to spare, times SLOWDOWN. Every CLI-spawning test takes its timeouts from here.
 */
export function cliTimeout(quietMs = CLI_TEST_MS): number {
  return Math.ceil(quietMs * SLOWDOWN);
}

/** A test that spawns the CLI a few times, on a quiet machine: twice vitest's default of 30 s. */
export const CLI_TEST_MS = 60_000;

/**
 * For `vi.setConfig` at the top of a CLI-spawning test file: its tests' and hooks' timeouts, `quietMs`
 * (what its longest test needs on a quiet machine) times SLOWDOWN.
 */
export function cliTimeouts(quietMs = CLI_TEST_MS): { testTimeout: number; hookTimeout: number } {
  return { testTimeout: cliTimeout(quietMs), hookTimeout: cliTimeout(quietMs) };
}

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
