/**
 * Memo tables for the expensive, time-independent parts of DCAP verification (certificate
 * signatures, CRL signatures, collateral signatures), keyed by the exact bytes they were computed
 * from. An entry also records the interval in which everything it vouches for is valid, so a
 * lookup at another time outside that interval recomputes (and fails with the precise reason).
 */
import { bs, toHex } from '../../util/bytes.js';

export interface Timed<T> {
  value: T;
  from: Date;
  until: Date;
}

/** Insertion-ordered map that forgets its oldest entries beyond `max`. */
export class BoundedCache<V> {
  private readonly map = new Map<string, V>();
  constructor(private readonly max: number) {}
  get(key: string): V | undefined {
    return this.map.get(key);
  }
  set(key: string, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value as string);
  }
  delete(key: string): void {
    this.map.delete(key);
  }
  clear(): void {
    this.map.clear();
  }
}

const digests = new WeakMap<Uint8Array, string>();

/** SHA-256 hex of `bytes`, remembered per buffer object (collateral sources often return the same one). */
export async function digestHex(bytes: Uint8Array): Promise<string> {
  const hit = digests.get(bytes);
  if (hit) return hit;
  const d = toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', bs(bytes))));
  digests.set(bytes, d);
  return d;
}

/**
 * Returns the cached value when `at` lies in its interval, otherwise computes it afresh. Concurrent
 * callers share one computation; a failed computation is not remembered.
 */
export async function memoTimed<T>(
  cache: BoundedCache<Promise<Timed<T>>>,
  key: string,
  at: Date,
  compute: () => Promise<Timed<T>>,
): Promise<T> {
  const hit = cache.get(key);
  if (hit) {
    const t = await hit.catch(() => undefined);
    if (t && at >= t.from && at <= t.until) return t.value;
  }
  const p = compute();
  cache.set(key, p);
  try {
    return (await p).value;
  } catch (e) {
    if (cache.get(key) === p) {
      if (hit) cache.set(key, hit);
      else cache.delete(key);
    }
    throw e;
  }
}
