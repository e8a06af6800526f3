/**
 * Replay protection for a gateway (RFC 9458 §6.5): remembers each accepted request's `enc` (a fresh
 * ephemeral key per request) for `windowMs`. Requests older than the window must be refused by other
 * means (the gateway checks the inner request's Date, say), so the cache only has to span the window.
 * When full of unexpired entries it refuses rather than forgets, since forgetting would let a replay in.
 */
import { toHex } from '../util/bytes.js';
import { OhttpError } from './errors.js';

export interface ReplayCacheOptions {
  windowMs: number;
  maxEntries: number;
}

/** Remembers accepted requests by `enc`; throws an OhttpError (`replay`, …) for one to refuse. */
export interface ReplayGuard {
  check(enc: Uint8Array, now?: number): void | Promise<void>;
}

export class ReplayCache implements ReplayGuard {
  /** Insertion order is time order, so expired entries are always at the front. */
  private readonly seen = new Map<string, number>();

  constructor(private readonly options: ReplayCacheOptions) {
    if (!(options.windowMs > 0) || !(options.maxEntries > 0)) {
      throw new RangeError('ReplayCache needs a positive windowMs and maxEntries');
    }
  }

  get size(): number {
    return this.seen.size;
  }

  /** Records `enc` as seen at `now`; throws 'replay' if it was seen within the window. */
  check(enc: Uint8Array, now: number = Date.now()): void {
    this.evict(now);
    const id = toHex(enc);
    if (this.seen.has(id))
      throw new OhttpError('replay', 'this encapsulated request was already received (replay)');
    if (this.seen.size >= this.options.maxEntries) {
      throw new OhttpError(
        'replay-cache-full',
        `the replay cache holds ${this.options.maxEntries} requests from the last ${this.options.windowMs} ms; retry later`,
      );
    }
    this.seen.set(id, now);
  }

  private evict(now: number): void {
    for (const [id, at] of this.seen) {
      if (now - at < this.options.windowMs) return;
      this.seen.delete(id);
    }
  }
}
