import { readFileSync, rmSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { pendingTemporaries } from '../seal/node.js';
import { registerAgent, registerRun } from './agent.js';
import { registerChat } from './chat.js';
import { registerCollateral } from './collateral.js';
import { registerDemo } from './demo.js';
import { EXIT_USAGE, FlagError } from './io.js';
import { registerKbs } from './kbs.js';
import { registerLog } from './log.js';
import { registerLora } from './lora.js';
import { registerModel } from './model.js';
import { registerReceipt } from './receipt.js';
import { registerSealCommands } from './seal.js';
import { registerServe } from './serve.js';
import { registerTrain } from './train.js';
import { registerVerify } from './verify.js';

/**
 * The package version, read from package.json when the binary starts (src/cli and dist/cli are both
 * two levels below the package root), so that it cannot drift from what npm installed.
 */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** Entry point of the `cloister` binary; returns the exit code. Each verb lives in its own module. */
export async function main(argv: string[]): Promise<number> {
  const program = new Command('cloister')
    .description('Confidential AI: sealed models and data, attested TEEs, attested key release.')
    .version(packageVersion(), '-V, --version', 'print the version of cloister')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  registerSealCommands(program);
  registerVerify(program);
  registerCollateral(program);
  registerKbs(program);
  registerDemo(program);
  registerLog(program);
  registerAgent(program);
  registerRun(program);
  registerServe(program);
  registerChat(program);
  registerModel(program);
  registerReceipt(program);
  registerTrain(program);
  registerLora(program);
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    // Commander's own errors are usage errors (64, sysexits' EX_USAGE); verbs may end with a chosen
    // status the same way (README, "Exit status").
    if (e instanceof CommanderError)
      return e.code.startsWith('commander.') && e.exitCode !== 0 ? EXIT_USAGE : e.exitCode;
    if (e instanceof FlagError) {
      process.stderr.write(`cloister: ${oneLine(e.message)}\n`);
      return EXIT_USAGE;
    }
    process.stderr.write(`cloister: ${oneLine(describeError(e))}\n`);
    return 1;
  }
}

/** Exit status for a reader that went away: 128 + SIGPIPE, as a shell reports for `cat` in the same spot. */
const BROKEN_PIPE_STATUS = 141;

/**
 * Runs `command` as the `cloister` binary does (bin/cloister.js) and sets the exit status. Two ends
 * that would otherwise be wrong are made explicit: a command whose promise never settles (nothing
 * left to wait for, yet unfinished) exits non-zero instead of 0, and a failed write to stdout ends
 * with one line (or quietly, for a closed pipe) instead of a stack trace.
 */
export function runBinary(command: () => Promise<number>): void {
  let finished = false;
  process.stdout.on('error', stdoutFailed);
  process.on('beforeExit', () => {
    if (finished) return;
    finished = true;
    process.stderr.write(
      'cloister: internal error: the command stopped before finishing (nothing was left to wait for)\n',
    );
    process.exitCode = 1;
  });
  command().then(
    (code) => {
      finished = true;
      process.exitCode = code;
    },
    (err: unknown) => {
      finished = true;
      process.stderr.write(`cloister: ${oneLine(err instanceof Error ? err.message : String(err))}\n`);
      process.exitCode = 1;
    },
  );
}

/**
 * stdout failed (its error event comes before the failed write's own rejection). A closed pipe
 * (`cloister unseal … | head -c 10`) ends the process the way SIGPIPE ends other Unix tools: quietly,
 * non-zero, at once. Anything else (ENOSPC on /dev/full) is one line. Either way, no temporaries stay.
 */
function stdoutFailed(e: NodeJS.ErrnoException): never {
  for (const p of pendingTemporaries) rmSync(p, { force: true });
  if (e.code === 'EPIPE') process.exit(BROKEN_PIPE_STATUS);
  process.stderr.write(
    `cloister: cannot write to standard output: ${oneLine(errnoWords[e.code ?? ''] ?? e.message)}\n`,
  );
  process.exit(1);
}

const errnoWords: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EISDIR: 'is a directory',
  ENOSPC: 'no space left on device',
};

/**
 * The message as one line of plain text: messages carry text from elsewhere (a broker's problem
 * detail, a proxy's HTML error page in a JSON parse error), and a newline or a terminal escape in it
 * would start lines the operator takes for cloister's, or drive the terminal. Control characters are
 * shown escaped (a newline as \\n, ESC as \\u001b); tabs are kept.
 */
function oneLine(message: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point.
  return message.replace(/[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/g, (c) =>
    c === '\n' ? '\\n' : c === '\r' ? '\\r' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** One line an operator can act on; system errors keep their path and code. */
function describeError(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const sys = e as NodeJS.ErrnoException;
  if (sys.code && sys.path) return `${sys.path}: ${errnoWords[sys.code] ?? sys.code}`;
  return e.message;
}
