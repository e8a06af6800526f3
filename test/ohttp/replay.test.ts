import { describe, expect, it } from 'vitest';
import { ReplayCache } from '../../src/ohttp/index.js';
import { expectCode } from './helpers.js';

const enc = (n: number) => Uint8Array.of(n, 1, 2, 3);

describe('ReplayCache', () => {
  it('refuses an enc seen within the window and accepts it after', async () => {
    const cache = new ReplayCache({ windowMs: 1000, maxEntries: 10 });
    cache.check(enc(1), 0);
    await expectCode(() => cache.check(enc(1), 999), 'replay');
    cache.check(enc(2), 999);
    cache.check(enc(1), 1000);
    expect(cache.size).toBe(2);
  });
  it('when full of live entries it refuses instead of forgetting', async () => {
    const cache = new ReplayCache({ windowMs: 1000, maxEntries: 2 });
    cache.check(enc(1), 0);
    cache.check(enc(2), 10);
    await expectCode(() => cache.check(enc(3), 20), 'replay-cache-full');
    await expectCode(() => cache.check(enc(1), 20), 'replay');
    cache.check(enc(3), 1000); // enc(1) expired
    expect(cache.size).toBe(2);
  });
});
