/**
 * Where the verbs that verify evidence find vendor collateral: `--collateral DIR` offline, and with
 * `--online` the vendors' services through the on-disk cache. Light to import: the collateral
 * machinery loads when a verb asks for it.
 */
import { homedir } from 'node:os';
import path from 'node:path';
import type { CollateralSource } from '../attest/types.js';

/** The collateral cache: $XDG_CACHE_HOME/cloister/collateral (default ~/.cache/…). */
export function collateralCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'cloister', 'collateral');
}

/** `first` (collateral that came with the evidence), then --collateral DIR, then --online through the cache. */
export async function collateralSources(
  o: { collateral?: string; online?: boolean },
  first: CollateralSource[] = [],
): Promise<CollateralSource> {
  const { chainSources, httpSource } = await import('../attest/index.js');
  const { cachedSource, directorySource } = await import('../attest/collateral/node.js');
  return chainSources(
    ...first,
    ...(o.collateral ? [directorySource(o.collateral)] : []),
    ...(o.online ? [cachedSource(httpSource(), collateralCacheDir())] : []),
  );
}
