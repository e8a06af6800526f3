/** Running Python for the training API's tests: which interpreter, and one script to completion. */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

/** The client directory (python/), put on PYTHONPATH. */
export const PYTHON_DIR = new URL('../../python/', import.meta.url).pathname;

/** Debian's interpreter (where python3-torch lives) when present, else python3 from PATH. */
export const PYTHON =
  process.env.CLOISTER_TEST_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');

/** Why `code` cannot run with PYTHON (its stderr's last line), or undefined when it can. */
export function pythonCannot(code: string): string | undefined {
  try {
    execFileSync(PYTHON, ['-c', code], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
    return undefined;
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    const lines = (err.stderr?.toString() ?? err.message).trim().split('\n');
    return `${PYTHON} -c "${code}" failed: ${lines.at(-1)}`;
  }
}

export interface PyRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Spawns PYTHON without blocking this process (the API it talks to answers from here); `child` lets a
 * test kill it.
 */
export function runPython(args: string[], env: Record<string, string>) {
  const child = spawn(PYTHON, args, {
    env: { ...process.env, PYTHONPATH: PYTHON_DIR, PYTHONDONTWRITEBYTECODE: '1', ...env },
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
  const done = new Promise<PyRun>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return { child, done };
}
