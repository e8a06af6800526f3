/**
 * Replay protection for a gateway (RFC 9458 §6.5): remembers each accepted request's `enc` (a fresh
 * ephemeral key per request) together with the request's Date. The gateway refuses a request whose Date
 * is far from its clock; this layer adds what keeps that sound when the clock itself moves:
 *
 * - A Date floor: the latest Date accepted so far, less the window. A request dated before the floor is
 *   refused (`stale-date`) whatever the clock says now, so stepping the clock back cannot bring an old
 *   request back into the window.
 * - Entries are forgotten only once their Date is below the floor, never because the clock moved. Every
 *   accepted request is therefore either still remembered or refused by the floor: a replay is refused
 *   however the clock is stepped, forward or back, as long as this process lives.
 *
 * The floor cannot lock honest clients out: the gateway accepts Dates at most `windowMs / 2` ahead of its
 * clock, so the floor stays at least `windowMs / 2` behind it. After the clock was stepped forward and
 * back, requests dated during the step can hold the floor up for about the size of the step (fail closed).
 * When full of remembered entries the cache refuses rather than forgets, since forgetting would let a
 * replay in.
 */
import { toHex } from '../util/index.js';
import { OhttpError } from './errors.js';

export interface ReplayCacheOptions {
  /** The whole Date window the gateway accepts (twice its allowed clock skew). */
  windowMs: number;
  maxEntries: number;
}

/** Remembers accepted requests by `enc`; throws an OhttpError (`replay`, …) for one to refuse. */
export interface ReplayGuard {
  /** `date`: the request's Date (ms since the epoch), already checked against the gateway's clock. */
  check(enc: Uint8Array, date: number): void | Promise<void>;
}

/** The latest Date accepted, less the window: Dates below it are refused, whatever the clock says. */
export class DateFloor {
  private latest = Number.NEGATIVE_INFINITY;
  constructor(private readonly windowMs: number) {}

  get floor(): number {
    return this.latest - this.windowMs;
  }

  /** Throws `stale-date` for a Date below the floor. */
  check(date: number): void {
    if (date < this.floor) {
      throw new OhttpError(
        'stale-date',
        `the request's Date is more than ${this.windowMs / 1000} s before the latest one accepted`,
      );
    }
  }

  /** Call for each request whose Date the gateway accepted. */
  raise(date: number): void {
    if (date > this.latest) this.latest = date;
  }
}

const SECOND = 1000;

export class ReplayCache implements ReplayGuard {
  /** enc (hex) → the second of its Date. */
  private readonly seen = new Map<string, number>();
  /** Second of Date → the encs accepted with a Date in it: forgetting is by whole seconds. */
  private readonly bySecond = new Map<number, string[]>();
  /** Every second before this one has been forgotten. */
  private forgottenTo = Number.NEGATIVE_INFINITY;
  private readonly floor: DateFloor;

  constructor(private readonly options: ReplayCacheOptions) {
    if (!(options.windowMs > 0) || !(options.maxEntries > 0)) {
      throw new RangeError('ReplayCache needs a positive windowMs and maxEntries');
    }
    this.floor = new DateFloor(options.windowMs);
  }

  get size(): number {
    return this.seen.size;
  }

  /** Records `enc` as accepted with `date`; throws 'replay' for one remembered, 'stale-date' below the floor. */
  check(enc: Uint8Array, date: number): void {
    const id = toHex(enc);
    if (this.seen.has(id))
      throw new OhttpError('replay', 'this encapsulated request was already received (replay)');
    this.floor.check(date);
    // Raised before the capacity check: a request that decrypted and whose Date is in the window may
    // move the floor (never past the window's lower edge), and that may free room for it.
    this.floor.raise(date);
    this.forget();
    if (this.seen.size >= this.options.maxEntries) {
      throw new OhttpError(
        'replay-cache-full',
        `the replay cache holds ${this.options.maxEntries} requests from the last ${this.options.windowMs} ms; retry later`,
      );
    }
    const second = Math.floor(date / SECOND);
    this.seen.set(id, second);
    const ids = this.bySecond.get(second);
    if (ids) ids.push(id);
    else this.bySecond.set(second, [id]);
  }

  /** Forgets the seconds wholly below the floor: a replay of any of them is refused by the floor. */
  private forget(): void {
    const below = Math.floor(this.floor.floor / SECOND);
    if (!(below > this.forgottenTo)) return;
    const drop = (second: number) => {
      for (const id of this.bySecond.get(second) ?? []) this.seen.delete(id);
      this.bySecond.delete(second);
    };
    if (below - this.forgottenTo > this.bySecond.size) {
      // A long jump (the first request, or one after a quiet spell): visit the seconds held, not the gap.
      for (const second of [...this.bySecond.keys()]) if (second < below) drop(second);
    } else {
      for (let s = this.forgottenTo; s < below; s++) drop(s);
    }
    this.forgottenTo = below;
  }
}
