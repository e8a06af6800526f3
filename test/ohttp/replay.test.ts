import { describe, expect, it } from 'vitest';
import { DateFloor, ReplayCache } from '../../src/ohttp/index.js';
import { expectCode } from './helpers.js';

const enc = (n: number) => Uint8Array.of(n, 1, 2, 3);
const T = Date.UTC(2026, 0, 1);

describe('ReplayCache', () => {
  it('refuses a remembered enc; once the floor passes its Date, the floor refuses it instead', async () => {
    const cache = new ReplayCache({ windowMs: 10_000, maxEntries: 10 });
    cache.check(enc(1), T);
    await expectCode(() => cache.check(enc(1), T), 'replay');
    cache.check(enc(2), T + 10_000); // the floor is now T: enc(1) is still remembered
    await expectCode(() => cache.check(enc(1), T), 'replay');
    cache.check(enc(3), T + 11_000); // the floor passes T's whole second: enc(1) is forgotten
    expect(cache.size).toBe(2);
    await expectCode(() => cache.check(enc(1), T), 'stale-date');
    await expectCode(() => cache.check(enc(9), T + 999), 'stale-date');
  });

  it('forgets nothing because time passes: only a later accepted Date moves the floor', async () => {
    const cache = new ReplayCache({ windowMs: 10_000, maxEntries: 10 });
    cache.check(enc(1), T);
    // Requests dated around T, in any order (the clock stepping back and forth), never free enc(1).
    for (const [i, d] of [T + 9_000, T - 1_000, T + 2_000, T].entries()) cache.check(enc(10 + i), d);
    await expectCode(() => cache.check(enc(1), T), 'replay');
    expect(cache.size).toBe(5);
  });

  it('a long jump forgets the old seconds at once', async () => {
    const cache = new ReplayCache({ windowMs: 10_000, maxEntries: 10 });
    for (let i = 0; i < 5; i++) cache.check(enc(i), T + i * 1000);
    cache.check(enc(9), T + 86_400_000);
    expect(cache.size).toBe(1);
    await expectCode(() => cache.check(enc(2), T + 2000), 'stale-date');
  });

  it('when full of remembered entries it refuses instead of forgetting', async () => {
    const cache = new ReplayCache({ windowMs: 1000, maxEntries: 2 });
    cache.check(enc(1), T);
    cache.check(enc(2), T + 10);
    await expectCode(() => cache.check(enc(3), T + 500), 'replay-cache-full');
    await expectCode(() => cache.check(enc(1), T + 20), 'replay');
    cache.check(enc(3), T + 2000); // T's second is below the floor: enc(1) and enc(2) are forgotten
    expect(cache.size).toBe(1);
  });

  it('refuses a nonsensical window', () => {
    expect(() => new ReplayCache({ windowMs: 0, maxEntries: 1 })).toThrow(RangeError);
  });
});

describe('DateFloor', () => {
  it('refuses Dates more than the window before the latest accepted one', async () => {
    const f = new DateFloor(60_000);
    f.check(0); // nothing accepted yet: no floor
    f.raise(T);
    f.raise(T - 30_000); // an earlier Date does not lower it
    f.check(T - 60_000);
    await expectCode(() => f.check(T - 60_001), 'stale-date');
  });
});
