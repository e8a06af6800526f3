import { Command, CommanderError } from 'commander';
import { registerVerify } from './verify.js';

/** Entry point of the `cloister` binary; returns the exit code. Each verb lives in its own module. */
export async function main(argv: string[]): Promise<number> {
  const program = new Command('cloister')
    .description('Confidential AI: sealed models and data, attested TEEs, attested key release.')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  registerVerify(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    throw e;
  }
}
