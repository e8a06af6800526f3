import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sealBytes } from '../../src/seal/container.js';
import { generateKek, type KekKey, kekToJwk } from '../../src/seal/keys.js';
import { utf8 } from '../../src/util/bytes.js';
import { cliTimeout } from '../cli/run.js';
import type { FakeKbs } from './fake-kbs.js';

export const BIN = new URL('../../bin/cloister.js', import.meta.url).pathname;

/** The CLI runs from dist/: build it once if a fresh checkout has none. */
export function ensureBuilt(): void {
  if (!existsSync('dist/cli/agent.js'))
    execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
}

export function tempDir(parent = tmpdir()): string {
  return mkdtempSync(join(parent, 'cloister-agent-test-'));
}

/** A parent for private directories on tmpfs, so tests can check it is left empty. */
export function shmParent(): string {
  return tempDir('/dev/shm');
}

export function entries(dir: string): string[] {
  return readdirSync(dir);
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Spawns the CLI without blocking this process (the fake broker answers from here). */
export function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const done = new Promise<CliResult>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, done, stderr: () => stderr };
}

/** Resolves once `test` holds for the child's stderr (polling), or rejects after `ms`. */
export async function waitFor(
  read: () => string,
  test: RegExp,
  child: ChildProcess,
  ms = cliTimeout(15_000),
): Promise<void> {
  const start = Date.now();
  while (!test.test(read())) {
    if (child.exitCode !== null) throw new Error(`process exited before ${test}: ${read()}`);
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${test}: ${read()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A KEK stored on the fake broker in the JWK form `cloister keygen --kek` writes. */
export function putKek(kbs: FakeKbs, path: string): KekKey {
  const k = generateKek(`kbs:///${path}`);
  kbs.resources.set(path, utf8.encode(JSON.stringify(kekToJwk(k))));
  return k;
}

export async function writeSealed(
  dir: string,
  file: string,
  plaintext: string,
  kek: KekKey,
  name = '',
): Promise<string> {
  const sealed = await sealBytes(utf8.encode(plaintext), {
    recipients: [{ type: 'kbs', uri: kek.uri!, kek: kek.secret }],
    chunkSize: 64,
    name,
  });
  const p = join(dir, file);
  writeFileSync(p, sealed);
  return p;
}
