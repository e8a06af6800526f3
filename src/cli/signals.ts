/**
 * Removes temporary outputs on SIGINT/SIGTERM: the normal and error paths clean up after themselves,
 * but a signal ends the process before any `finally` runs.
 */
import { rmSync } from 'node:fs';
import { pendingTemporaries } from '../seal/node.js';

let installed = false;

export function cleanupOnSignals(): void {
  if (installed) return;
  installed = true;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const p of pendingTemporaries) rmSync(p, { force: true });
      process.stderr.write(`\ncloister: interrupted by ${sig}; partial output removed\n`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
}
