/**
 * Replay protection shared by replicas through a real Redis (CLOISTER_TEST_REDIS, default
 * redis://127.0.0.1:6379/15): a request accepted by one replica is refused by the other, records expire
 * with the window, other keys do not collide, and without Redis requests are refused, not let through.
 */
import { type AddressInfo, createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisReplayGuard } from '../../src/infer/replay-redis.js';
import {
  decapsulateResponse,
  decodeKeyConfigList,
  decodeResponse,
  encapsulateRequest,
  encodeRequest,
} from '../../src/ohttp/index.js';
import { fromBase64, utf8 } from '../../src/util/bytes.js';
import { type Harness, harnessServingKeys, startHarness } from './harness.js';

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
      await a.check(enc, Date.now());
      await expect(b.check(enc, Date.now())).rejects.toMatchObject({ code: 'replay' });
      await other.check(enc, Date.now()); // another key's requests are another namespace
      await new Promise((r) => setTimeout(r, 700));
      await b.check(enc, Date.now()); // the record expired after twice the window (room for clock skew)
      // Each replica keeps a Date floor: once it accepted a request, one dated more than the window
      // earlier is refused whatever its clock says (a clock stepped back cannot bring it back).
      const t = Date.now();
      await b.check(crypto.getRandomValues(new Uint8Array(32)), t + 1000);
      await expect(b.check(crypto.getRandomValues(new Uint8Array(32)), t)).rejects.toMatchObject({
        code: 'stale-date',
      });
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
      await g.check(new Uint8Array(32).fill(1), Date.now());
      silent = true;
      await expect(g.check(new Uint8Array(32).fill(2), Date.now())).rejects.toMatchObject({
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
    await expect(g.check(new Uint8Array(32), Date.now())).rejects.toMatchObject({
      code: 'replay-store-unavailable',
    });
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
    const keys = a.server.attestation.identity.ohttpKeys;
    const [config] = decodeKeyConfigList(fromBase64(keys));
    const request = encodeRequest({
      method: 'GET',
      path: '/v1/models',
      headers: [['date', new Date().toUTCString()]],
    });
    const captured = await encapsulateRequest(config!, request);
    const post = (h: Harness) =>
      fetch(`${h.server.url}/.well-known/ohttp-gateway`, {
        method: 'POST',
        headers: { 'content-type': 'message/ohttp-req' },
        body: captured.encapsulated.slice(),
      });
    const open = async (r: Response) =>
      decodeResponse(await decapsulateResponse(captured.context, new Uint8Array(await r.arrayBuffer())));
    expect((await open(await post(a))).status).toBe(200);
    // The refusal is itself encrypted (RFC 9458 §5.2): only the request's sender can read it.
    const replayed = await open(await post(b));
    expect(replayed.status).toBe(400);
    expect(JSON.parse(utf8.decode(replayed.content)).title).toBe('replay');
  });
});
