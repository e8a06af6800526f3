/**
 * Replay protection shared by replicas through a real Redis (CLOISTER_TEST_REDIS, default
 * redis://127.0.0.1:6379/15): a request accepted by one replica is refused by the other, records expire
 * with the window, other keys do not collide, and without Redis requests are refused, not let through.
 */
import { type AddressInfo, createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { confidentialFetch } from '../../src/client/fetch.js';
import { RedisReplayGuard } from '../../src/infer/replay-redis.js';
import {
  type Harness,
  harnessServingKeys,
  NO_COLLATERAL,
  SHARED_KEYS_POLICY,
  startHarness,
} from './harness.js';

const REDIS = process.env.CLOISTER_TEST_REDIS ?? 'redis://127.0.0.1:6379/15';

const sharedKeys = () => harnessServingKeys();

describe('RedisReplayGuard', () => {
  it('accepts an enc once, again after the window, and keeps key sets apart', async () => {
    const [k1, k2] = [await sharedKeys(), await sharedKeys()];
    const a = await RedisReplayGuard.connect({ url: REDIS, windowMs: 300, key: k1.gateway.config });
    const b = await RedisReplayGuard.connect({ url: REDIS, windowMs: 300, key: k1.gateway.config });
    const other = await RedisReplayGuard.connect({ url: REDIS, windowMs: 300, key: k2.gateway.config });
    try {
      const enc = crypto.getRandomValues(new Uint8Array(32));
      await a.check(enc);
      await expect(b.check(enc)).rejects.toMatchObject({ code: 'replay' });
      await other.check(enc); // another key's requests are another namespace
      await new Promise((r) => setTimeout(r, 700));
      await b.check(enc); // the record expired after twice the window (room for clock skew)
    } finally {
      for (const g of [a, b, other]) g.close();
    }
  });

  it('a Redis that stops answering refuses requests after the command timeout', async () => {
    // A stand-in that answers every command with +OK until told to go silent.
    let silent = false;
    const server = createServer((socket) => {
      socket.on('data', (d) => {
        if (silent) return;
        const commands = d
          .toString()
          .split('\r\n')
          .filter((l) => l.startsWith('*')).length;
        socket.write('+OK\r\n'.repeat(commands));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const k = await sharedKeys();
    const g = await RedisReplayGuard.connect({
      url: `redis://127.0.0.1:${port}`,
      windowMs: 1000,
      key: k.gateway.config,
      commandTimeoutMs: 200,
    });
    try {
      await g.check(new Uint8Array(32).fill(1));
      silent = true;
      await expect(g.check(new Uint8Array(32).fill(2))).rejects.toMatchObject({
        code: 'replay-store-unavailable',
        message: expect.stringMatching(/no answer within 200 ms/),
      });
    } finally {
      g.close();
      server.close();
    }
  });

  it('fails closed: an unreachable Redis is a startup error, a lost one refuses requests', async () => {
    const k = await sharedKeys();
    await expect(
      RedisReplayGuard.connect({
        url: 'redis://:secret@127.0.0.1:1',
        windowMs: 1000,
        key: k.gateway.config,
        connectTimeoutMs: 500,
      }),
    ).rejects.toThrow(/^cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:1/);
    const g = await RedisReplayGuard.connect({ url: REDIS, windowMs: 1000, key: k.gateway.config });
    g.close();
    await expect(g.check(new Uint8Array(32))).rejects.toMatchObject({ code: 'replay-store-unavailable' });
  });
});

describe('two replicas sharing keys and a Redis', () => {
  let a: Harness;
  let b: Harness;
  const guards: RedisReplayGuard[] = [];
  beforeAll(async () => {
    const keys = await sharedKeys();
    for (let i = 0; i < 2; i++)
      guards.push(await RedisReplayGuard.connect({ url: REDIS, windowMs: 60_000, key: keys.gateway.config }));
    [a, b] = await Promise.all(guards.map((replay) => startHarness({ keys, replay })));
  });
  afterAll(async () => {
    await Promise.all([a, b].map((h) => h.server.close()));
    for (const g of guards) g.close();
  });

  it('a request captured at one replica and replayed to the other is refused there', async () => {
    let captured: { body: BodyInit; headers: HeadersInit } | undefined;
    const f = confidentialFetch({
      url: a.server.url,
      policy: SHARED_KEYS_POLICY,
      collateral: NO_COLLATERAL,
      fetch: (async (input: RequestInfo | URL, init?: RequestInit) => {
        if (init?.method === 'POST') captured = { body: init.body!, headers: init.headers! };
        return fetch(input, init);
      }) as typeof fetch,
    });
    const ok = await f(`${a.server.url}/v1/models`);
    expect(ok.status).toBe(200);
    const replayed = await fetch(`${b.server.url}/.well-known/ohttp-gateway`, {
      method: 'POST',
      headers: captured!.headers,
      body: captured!.body,
    });
    expect(replayed.status).toBe(400);
    expect((await replayed.json()).title).toBe('replay');
  });
});
