import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const BIN = new URL('../../bin/cloister.js', import.meta.url).pathname;

export interface Result {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the built CLI as a separate process, as a user would. */
export function cloister(args: string[], opts: { cwd?: string; input?: Uint8Array } = {}): Result {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: opts.cwd,
    input: opts.input,
    maxBuffer: 1 << 30,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

export function cloisterAsync(args: string[], opts: { cwd?: string } = {}) {
  return spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'cloister-test-'));
}
