/**
 * Runs one document's command examples as a reader would: in order, in one fresh directory, in bash,
 * with the `cloister` command on PATH and the package importable (as after `npm install cloister`).
 * Each block runs in its own bash process; the exported variables and the working directory a block
 * leaves are handed to the next (as one terminal session would keep them). Background servers a block
 * starts (`cloister kbs serve … &`) live until the document ends, then their process groups are killed.
 * Output goes to files, never pipes, so a server left running cannot hold a block open.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { cliTimeout } from '../cli/run.js';
import { type Block, directive, isShell } from './blocks.js';

export const ROOT = new URL('../../', import.meta.url).pathname.replace(/\/$/, '');

/** Packages the examples import besides cloister (a reader installs them beside it). */
const IMPORTED = ['openai'];

/** Quiet-machine time a block may take unless it says otherwise. */
const BLOCK_MS = 90_000;

export interface BlockResult {
  block: Block;
  status: number | 'timeout' | 'skipped' | 'saved';
  output: string;
}

/** What a failing block prints for the person reading the test report. */
export function describeFailure(r: BlockResult, want: number): string {
  const tail = r.output.split('\n').slice(-40).join('\n');
  return `${r.block.doc}:${r.block.line}: ${r.status === 'timeout' ? 'timed out' : `exited ${r.status}`}, expected ${want}\n--- block ---\n${r.block.body}\n--- output (last lines) ---\n${tail}`;
}

/** A directory laid out as after `npm install cloister`: `cloister` on PATH, the package and its dependencies importable. */
function prepare(): { dir: string; env: NodeJS.ProcessEnv } {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-doctest-'));
  const meta = join(dir, '.doctest');
  const bin = join(meta, 'bin');
  mkdirSync(bin, { recursive: true });
  mkdirSync(join(meta, 'home'));
  writeFileSync(
    join(bin, 'cloister'),
    `#!/bin/sh\nexec "${process.execPath}" "${ROOT}/bin/cloister.js" "$@"\n`,
    {
      mode: 0o755,
    },
  );
  const modules = join(dir, 'node_modules');
  mkdirSync(join(modules, '.bin'), { recursive: true });
  // Only the packages the examples import themselves, each linked whole: linking a scope folder
  // (`@hpke`) would let an `npm` command in an example prune this checkout's own node_modules.
  for (const name of IMPORTED) symlinkSync(join(ROOT, 'node_modules', name), join(modules, name));
  symlinkSync(ROOT, join(modules, 'cloister'));
  symlinkSync(join(bin, 'cloister'), join(modules, '.bin', 'cloister'));
  writeFileSync(join(meta, 'env.sh'), '');
  writeFileSync(join(meta, 'cwd'), dir);
  // A clean environment: nothing of the developer's (CLOISTER_* variables, NODE_OPTIONS) leaks in.
  const env: NodeJS.ProcessEnv = {
    PATH: `${bin}:${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
    HOME: join(meta, 'home'),
    LANG: 'C.UTF-8',
    TERM: 'dumb',
    DOCTEST_DIR: meta,
  };
  return { dir, env };
}

/** bash's part: restore the session, run the block under `set -eo pipefail`, save the session on any exit. */
const RUNNER = `
cd "$(cat "$DOCTEST_DIR/cwd")"
. "$DOCTEST_DIR/env.sh"
trap 'rc=$?; export -p | grep -Ev "^declare -x (PWD|OLDPWD|SHLVL|_)=" > "$DOCTEST_DIR/env.sh"; pwd > "$DOCTEST_DIR/cwd"; exit $rc' EXIT
set -eo pipefail
. "$DOCTEST_DIR/block.sh"
`;

function runBlock(dir: string, env: NodeJS.ProcessEnv, b: Block, groups: number[]): Promise<BlockResult> {
  const meta = join(dir, '.doctest');
  writeFileSync(join(meta, 'block.sh'), `${b.body}\n`);
  writeFileSync(join(meta, 'runner.sh'), RUNNER);
  const log = join(meta, `block-${b.line}.log`);
  const fd = openSync(log, 'w');
  const child = spawn('bash', [join(meta, 'runner.sh')], {
    cwd: dir,
    env,
    detached: true,
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  if (child.pid !== undefined) groups.push(child.pid);
  const ms = cliTimeout((directive(b, 'timeout')?.seconds ?? 0) * 1000 || BLOCK_MS);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      kill(child.pid, 'SIGKILL');
      resolve({ block: b, status: 'timeout', output: readFileSync(log, 'utf8') });
    }, ms);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ block: b, status: code ?? 128 + signalNumber(signal), output: readFileSync(log, 'utf8') });
    });
  });
}

function signalNumber(s: NodeJS.Signals | null): number {
  return s === 'SIGKILL' ? 9 : s === 'SIGTERM' ? 15 : s === 'SIGINT' ? 2 : 0;
}

function kill(pgid: number | undefined, signal: NodeJS.Signals): void {
  if (pgid === undefined) return;
  try {
    process.kill(-pgid, signal);
  } catch {
    // The group is gone already.
  }
}

/**
 * Runs a document's blocks in order and returns each result; stops at the first block whose status
 * is not the expected one (later blocks build on it). The directory and every process started are
 * gone when it returns.
 */
export async function runDocument(blocks: Block[]): Promise<BlockResult[]> {
  const { dir, env } = prepare();
  const groups: number[] = [];
  const results: BlockResult[] = [];
  try {
    for (const b of blocks) {
      const save = directive(b, 'save');
      if (directive(b, 'skip')) {
        results.push({ block: b, status: 'skipped', output: '' });
      } else if (save) {
        const cwd = readFileSync(join(dir, '.doctest', 'cwd'), 'utf8').trim();
        const path = join(cwd, save.file);
        mkdirSync(dirname(path), { recursive: true });
        writeFileSync(path, `${b.body}\n`);
        results.push({ block: b, status: 'saved', output: '' });
      } else if (isShell(b)) {
        const r = await runBlock(dir, env, b, groups);
        results.push(r);
        if (r.status !== (directive(b, 'exit')?.status ?? 0)) break;
      }
    }
  } finally {
    for (const g of groups) kill(g, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    for (const g of groups) kill(g, 'SIGKILL');
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
  return results;
}
