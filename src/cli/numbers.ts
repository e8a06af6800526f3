/** A whole-number option as typed on the command line; anything else is a usage error naming the option. */
export function integerOption(v: string, what: string, min: number): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < min) {
    throw new Error(`${what} must be an integer ≥ ${min}, not '${v}'`);
  }
  return n;
}
