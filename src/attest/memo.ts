/**
 * The memo helpers every verifier uses. `BytesMemo` remembers a value per buffer object (checked by
 * content); `BoundedCache` is a size-bounded map; `memoTimed` keeps a verification together with the
 * interval in which everything it vouches for is valid, so a look-up at a time outside that interval
 * recomputes (and fails with the precise reason). Where the instances live is the caller's business:
 * anything that depends on time, trust anchors or collateral lives in a VerifierContext (context.ts).
 */
import { bs, toHex } from '../util/index.js';

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

/**
 * Memo per buffer object (a caching collateral source hands back the same buffers for every piece of
 * evidence, and decoding them costs more than the signature checks). The entry keeps a copy of the
 * bytes and is used only while the buffer still holds them, so a buffer rewritten in place is never
 * mistaken for what was computed before. A failed computation is not kept: bad bytes fail afresh with
 * their own error. Entries go with their buffers (WeakMap), so the memo needs no bound of its own.
 */
export class BytesMemo<T> {
  private readonly map = new WeakMap<Uint8Array, { copy: Uint8Array; value: T }>();
  get(bytes: Uint8Array, compute: () => T): T {
    const hit = this.map.get(bytes);
    if (hit && sameBytes(hit.copy, bytes)) return hit.value;
    const value = compute();
    this.map.set(bytes, { copy: bytes.slice(), value });
    return value;
  }
}

/** Equality of public bytes, a word at a time where both views are 4-byte aligned (the common case). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const n = a.length >> 2;
    const wa = new Uint32Array(a.buffer, a.byteOffset, n);
    const wb = new Uint32Array(b.buffer, b.byteOffset, n);
    for (; i < n; i++) if (wa[i] !== wb[i]) return false;
    i = n << 2;
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Shared by every context: a digest is a pure function of the bytes, so one verifier can learn
 * nothing from another's entries, and the entries go with their buffers.
 */
const digests = new BytesMemo<Promise<string>>();

/** SHA-256 hex of `bytes`, once per buffer. */
export function digestHex(bytes: Uint8Array): Promise<string> {
  return digests.get(bytes, async () =>
    toHex(new Uint8Array(await crypto.subtle.digest('SHA-256', bs(bytes)))),
  );
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
