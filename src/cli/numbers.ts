import { FlagError } from './io.js';

/** A whole-number option as typed on the command line; anything else is a usage error naming the option. */
export function integerOption(v: string, what: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `from ${min} to ${max}`;
    throw new FlagError(`${what} must be an integer ${range}, not '${v}'`);
  }
  return n;
}
