/**
 * Keeping the workload from outliving `cloister run` (Node-only). SIGINT/SIGTERM/SIGHUP and the
 * normal end are handled in run.ts (the group is signalled, then killed); this module covers the one
 * end the agent cannot see, SIGKILL (or the OOM killer), with two mechanisms the kernel drives:
 *
 * - a parent-death signal on the workload's main process: `setpriv --pdeathsig KILL -- COMMAND`
 *   (util-linux) sets PR_SET_PDEATHSIG between fork and exec, then execs COMMAND in the same process.
 *   Node cannot call prctl, and a native addon could only set it on the agent itself, not on a child
 *   between fork and exec (Node's spawn offers no hook there), so an exec wrapper is the way.
 *   Without setpriv the run goes on with a warning.
 * - a group watcher: a small `sh` holding the read end of a pipe whose write end only the agent holds.
 *   When the agent dies by any means the kernel closes the pipe; the watcher reads end-of-file and kills
 *   the workload's whole process group — the children a workload started, which PR_SET_PDEATHSIG
 *   (per process) does not reach. On a normal end the agent tells it to stop instead.
 *
 * Neither reaches a process that left the group (setsid): a workload that must be contained against
 * itself needs a PID namespace or a cgroup, which the TEE's init should provide.
 */
import { execFile, spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { delimiter, join } from 'node:path';
import { AgentError } from './keys.js';

/**
 * Finds `command` as execvp(3) would (a name with a slash as it is, else along PATH), so that a
 * missing program is a clear error before anything is spawned rather than an exit status of a wrapper.
 */
export async function findProgram(command: string, path: string | undefined): Promise<string> {
  const candidates = command.includes('/')
    ? [command]
    : (path ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).map((d) => join(d || '.', command));
  let code = 'ENOENT';
  for (const c of candidates) {
    try {
      if (!(await stat(c)).isFile()) continue;
      await access(c, constants.X_OK);
      return c;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EACCES') code = 'EACCES';
    }
  }
  throw new AgentError('spawn-failed', `cannot run ${command}: ${code}`);
}

/** The wrapper that gives the workload a parent-death signal, or why there is none. */
export type ParentDeath = { wrapper: string[] } | { unavailable: string };

/** Looks for setpriv along `path` and checks it knows --pdeathsig (util-linux 2.33 and later). */
export async function parentDeathWrapper(path: string | undefined): Promise<ParentDeath> {
  let setpriv: string;
  try {
    setpriv = await findProgram('setpriv', path);
  } catch {
    return { unavailable: 'setpriv (util-linux) is not installed' };
  }
  const works = await new Promise<boolean>((resolve) =>
    execFile(setpriv, ['--pdeathsig', 'KILL', '--version'], (e) => resolve(!e)),
  );
  if (!works)
    return { unavailable: `${setpriv} does not support --pdeathsig (util-linux 2.33 or later does)` };
  return { wrapper: [setpriv, '--pdeathsig', 'KILL', '--'] };
}

// Ignores the terminal's signals (the agent forwards those itself); reads the group, then waits for
// "stop" or for end-of-file (the agent is gone), in which case it kills the group.
const WATCHER = `trap '' INT TERM HUP
read -r group || exit 0
read -r word
[ "$word" = stop ] || kill -s KILL -- "-$group" 2>/dev/null
exit 0`;

export interface GroupWatcher {
  /** From now on the death of the agent kills process group `pgid`. */
  arm(pgid: number): void;
  /** The agent ended the group itself: the watcher exits without killing anything (idempotent). */
  release(): void;
}

/** Starts the group watcher; `warn` hears if it cannot run. */
export function startGroupWatcher(warn: (line: string) => void): GroupWatcher {
  // Its own session: a terminal's Ctrl-C (to the agent's group) does not reach it.
  const w = spawn('/bin/sh', ['-c', WATCHER, 'cloister-watcher'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
  });
  w.once('error', (e) =>
    warn(
      `WARNING: cannot start the group watcher (${(e as NodeJS.ErrnoException).code ?? e.message}): if the agent is killed, processes the workload started may outlive it`,
    ),
  );
  // A pipe is a socket ({stdio: 'pipe'}), whose unref the Writable type does not show.
  const pipe = w.stdin as Socket;
  // The pipe breaks if the watcher died early; that was reported above.
  pipe.on('error', () => {});
  // Neither the watcher nor its pipe keeps the agent running.
  w.unref();
  pipe.unref();
  let armed = false;
  return {
    arm(pgid) {
      armed = true;
      pipe.write(`${pgid}\n`);
    },
    release() {
      if (pipe.writableEnded) return;
      // Unarmed, end-of-file before a group makes it exit at once.
      if (armed) pipe.end('stop\n');
      else pipe.end();
    },
  };
}
