import { describe, expect, it } from 'vitest';
import { RequestQueue } from '../../src/infer/queue.js';

describe('RequestQueue', () => {
  it('runs at most `concurrency` at once, in arrival order, and refuses beyond maxQueued with 429', async () => {
    const q = new RequestQueue({ concurrency: 2, maxQueued: 1 });
    const signal = new AbortController().signal;
    const r1 = await q.acquire(signal);
    const r2 = await q.acquire(signal);
    let third = false;
    const p3 = q.acquire(signal).then((r) => {
      third = true;
      return r;
    });
    await expect(q.acquire(signal)).rejects.toMatchObject({ status: 429, code: 'queue_full' });
    expect([q.active, q.queued]).toEqual([2, 1]);
    await Promise.resolve();
    expect(third).toBe(false);
    r1();
    r1(); // a second release is ignored
    const r3 = await p3;
    expect([q.active, q.queued]).toEqual([2, 0]);
    r2();
    r3();
    expect(q.active).toBe(0);
  });

  it('a waiting request whose client leaves gives its place up', async () => {
    const q = new RequestQueue({ concurrency: 1, maxQueued: 4 });
    const release = await q.acquire(new AbortController().signal);
    const ac = new AbortController();
    const waiting = q.acquire(ac.signal);
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'client_closed' });
    expect(q.queued).toBe(0);
    release();
    expect(q.active).toBe(0);
    await expect(q.acquire(ac.signal)).rejects.toMatchObject({ code: 'client_closed' });
  });

  it('refuses nonsense limits', () => {
    expect(() => new RequestQueue({ concurrency: 0, maxQueued: 1 })).toThrow(RangeError);
  });
});
