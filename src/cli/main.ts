import { Command, CommanderError } from 'commander';
import { registerAgent } from './agent.js';
import { registerChat } from './chat.js';
import { registerDemo } from './demo.js';
import { registerKbs } from './kbs.js';
import { registerLog } from './log.js';
import { registerModel } from './model.js';
import { registerSealCommands } from './seal.js';
import { registerServe } from './serve.js';
import { registerVerify } from './verify.js';

/** Entry point of the `cloister` binary; returns the exit code. Each verb lives in its own module. */
export async function main(argv: string[]): Promise<number> {
  const program = new Command('cloister')
    .description('Confidential AI: sealed models and data, attested TEEs, attested key release.')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  registerSealCommands(program);
  registerVerify(program);
  registerKbs(program);
  registerDemo(program);
  registerLog(program);
  registerAgent(program);
  registerServe(program);
  registerChat(program);
  registerModel(program);
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    // Commander's own errors are usage errors (exit 2); verbs may end with a chosen status the same way.
    if (e instanceof CommanderError)
      return e.code.startsWith('commander.') && e.exitCode !== 0 ? 2 : e.exitCode;
    process.stderr.write(`cloister: ${describeError(e)}\n`);
    return 1;
  }
}

/** One line an operator can act on; system errors keep their path and code. */
function describeError(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const sys = e as NodeJS.ErrnoException;
  if (sys.code && sys.path) {
    const what: Record<string, string> = {
      ENOENT: 'no such file or directory',
      EACCES: 'permission denied',
      EISDIR: 'is a directory',
      ENOSPC: 'no space left on device',
    };
    return `${sys.path}: ${what[sys.code] ?? sys.code}`;
  }
  return e.message;
}
