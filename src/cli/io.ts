/**
 * What the verbs share for reading their inputs and writing their answers. Every verb imports it at
 * start (before `--help` is even parsed), so it stays light: Node built-ins only.
 */
import { readFile } from 'node:fs/promises';

/** A failure of the command itself (unreadable file, bad input): one line, exit 1. */
export class UsageError extends Error {}

/**
 * Exit status of a command line that cannot be run as given (unknown option, missing argument, a
 * flag's value of the wrong form): sysexits' EX_USAGE. README "Exit status" lists every status.
 */
export const EXIT_USAGE = 64;

/** A flag's value of the wrong form (`--port abc`): one line naming the flag, exit EXIT_USAGE. */
export class FlagError extends UsageError {}

/** A text file a verb was pointed at; an unreadable one is a usage error naming `what` it was meant to be. */
export async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

/** Where a verb writes its answer and its complaints; tests pass their own to capture both. */
export interface Output {
  out(s: string): void;
  err(s: string): void;
}

/** The process's own standard output and standard error. */
export const stdio: Output = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

/** A JSON answer on stdout, indented for people and parseable by scripts. */
export function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}
