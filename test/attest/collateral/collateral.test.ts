import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  chainSources,
  httpSource,
  memoryCache,
  offlineSource,
} from '../../../src/attest/collateral/index.js';
import { cachedSource, directorySource } from '../../../src/attest/collateral/node.js';
import { AttestationError, type CollateralSource } from '../../../src/attest/common/types.js';
import { utf8 } from '../../../src/util/bytes.js';

const req = {
  url: 'https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00',
  files: ['tcb_info.json', 'tcb.json'],
};

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), 'cloister-collateral-'));
}

async function refusal(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  return e as AttestationError;
}

function fakeFetch(handler: (url: string) => Response | Promise<Response>) {
  const calls: string[] = [];
  const f = (async (input: string | URL | Request) => {
    calls.push(String(input));
    return handler(String(input));
  }) as typeof fetch;
  return { f, calls };
}

describe('directorySource', () => {
  it('serves the first listed file that exists, with its header sidecar', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'tcb.json'), 'second');
    writeFileSync(path.join(dir, 'tcb.json.headers.json'), '{"TCB-Info-Issuer-Chain":"pem"}');
    let item = await directorySource(dir).get(req);
    expect(utf8.decode(item!.body)).toBe('second');
    expect(item!.headers).toEqual({ 'tcb-info-issuer-chain': 'pem' });
    writeFileSync(path.join(dir, 'tcb_info.json'), 'first');
    item = await directorySource(dir).get(req);
    expect(utf8.decode(item!.body)).toBe('first');
    expect(item!.headers).toEqual({});
  });

  it('reads the test vectors folder by their file names', async () => {
    const item = await directorySource('test/vectors/tdx/go-tdx-guest_v4_50806f').get({
      url: 'https://example/tcb',
      files: ['tcb_info.json'],
    });
    expect(utf8.decode(item!.body)).toContain('tcbInfo');
  });

  it('gives undefined for missing files or folder, and never leaves the folder', async () => {
    const dir = tmp();
    expect(await directorySource(dir).get(req)).toBeUndefined();
    expect(await directorySource(path.join(dir, 'nope')).get(req)).toBeUndefined();
    writeFileSync(path.join(dir, 'secret'), 'x');
    const inner = path.join(dir, 'inner');
    expect(
      await directorySource(inner).get({ url: 'u', files: ['../secret', path.join(dir, 'secret')] }),
    ).toBeUndefined();
  });

  it('refuses a malformed header sidecar', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'tcb.json'), 'x');
    writeFileSync(path.join(dir, 'tcb.json.headers.json'), '{"a": 1}');
    expect((await refusal(directorySource(dir).get(req))).code).toBe('bad-collateral-headers');
  });
});

describe('httpSource', () => {
  it('returns body and lower-case headers on 2xx', async () => {
    const { f, calls } = fakeFetch(
      () => new Response('tcb', { headers: { 'TCB-Info-Issuer-Chain': 'pem' } }),
    );
    const item = await httpSource({ fetch: f }).get(req);
    expect(utf8.decode(item!.body)).toBe('tcb');
    expect(item!.headers['tcb-info-issuer-chain']).toBe('pem');
    expect(calls).toEqual([req.url]);
  });

  it('404 is "no such item"; other failures are clear errors', async () => {
    expect(
      await httpSource({ fetch: fakeFetch(() => new Response('', { status: 404 })).f }).get(req),
    ).toBeUndefined();
    const e503 = await refusal(
      httpSource({ fetch: fakeFetch(() => new Response('', { status: 503 })).f }).get(req),
    );
    expect(e503.code).toBe('collateral-unavailable');
    expect(e503.message).toMatch(/HTTP 503.*tcb_info\.json/);
    const down = await refusal(
      httpSource({
        fetch: fakeFetch(() => {
          throw new TypeError('fetch failed');
        }).f,
      }).get(req),
    );
    expect(down.message).toMatch(/fetch failed/);
    const big = await refusal(
      httpSource({ fetch: fakeFetch(() => new Response('12345')).f, maxBytes: 4 }).get(req),
    );
    expect(big.message).toMatch(/exceeds 4/);
  });

  it('times out', async () => {
    const hang = ((_u: unknown, init?: RequestInit) =>
      new Promise<Response>((_, reject) => {
        init?.signal?.addEventListener('abort', () => reject(init.signal!.reason));
      })) as typeof fetch;
    const e = await refusal(httpSource({ fetch: hang, timeoutMs: 20 }).get(req));
    expect(e.message).toMatch(/no answer in 20 ms/);
  });
});

describe('chainSources and offline', () => {
  const has = (text: string): CollateralSource => ({
    get: async () => ({ body: utf8.encode(text), headers: {} }),
  });
  const fails: CollateralSource = {
    get: async () => {
      throw new AttestationError('verify', 'collateral-unavailable', 'down');
    },
  };

  it('takes the first source that has the item, skipping failures', async () => {
    expect(utf8.decode((await chainSources(offlineSource, has('a'), has('b')).get(req))!.body)).toBe('a');
    expect(utf8.decode((await chainSources(fails, has('b')).get(req))!.body)).toBe('b');
    expect(await chainSources(offlineSource, offlineSource).get(req)).toBeUndefined();
    expect((await refusal(chainSources(offlineSource, fails).get(req))).message).toBe('down');
  });
});

describe('cachedSource', () => {
  it('caches, serves fresh entries without the network, refreshes old ones, and survives the network going away', async () => {
    const dir = tmp();
    let clock = new Date('2026-01-01T00:00:00Z');
    let answer = 'v1';
    let online = true;
    const { f, calls } = fakeFetch(() => {
      if (!online) throw new TypeError('fetch failed');
      return new Response(answer, { headers: { 'x-h': 'h' } });
    });
    const src = cachedSource(httpSource({ fetch: f }), dir, { now: () => clock, maxAgeMs: 60_000 });
    expect(utf8.decode((await src.get(req))!.body)).toBe('v1');
    expect(readdirSync(dir).sort()).toHaveLength(2);
    answer = 'v2';
    clock = new Date(clock.getTime() + 30_000);
    expect(utf8.decode((await src.get(req))!.body)).toBe('v1'); // fresh: no fetch
    expect(calls).toHaveLength(1);
    clock = new Date(clock.getTime() + 60_000);
    expect(utf8.decode((await src.get(req))!.body)).toBe('v2'); // stale: refetched
    expect(calls).toHaveLength(2);
    online = false;
    clock = new Date(clock.getTime() + 3600_000);
    const item = await src.get(req);
    expect(utf8.decode(item!.body)).toBe('v2'); // network down: the cache answers
    expect(item!.headers['x-h']).toBe('h');
    // offline mode never asks the inner source
    const offline = cachedSource({ get: async () => expect.unreachable('network used offline') }, dir, {
      offline: true,
    });
    expect(utf8.decode((await offline.get(req))!.body)).toBe('v2');
    expect(await offline.get({ url: 'https://other', files: [] })).toBeUndefined();
  });

  it('fails clearly when neither network nor cache has it', async () => {
    const src = cachedSource(
      httpSource({
        fetch: fakeFetch(() => {
          throw new TypeError('fetch failed');
        }).f,
      }),
      tmp(),
    );
    expect((await refusal(src.get(req))).code).toBe('collateral-unavailable');
  });
});

describe('memoryCache', () => {
  /** A source that counts its lookups and answers from a mutable map. */
  function counting(items: Map<string, Uint8Array>) {
    let calls = 0;
    let fail = false;
    const source: CollateralSource = {
      get: async (r) => {
        calls++;
        if (fail) throw new Error('disk gone');
        const body = items.get(r.url);
        return body ? { body, headers: {} } : undefined;
      },
    };
    return {
      source,
      calls: () => calls,
      failNext: (v: boolean) => {
        fail = v;
      },
    };
  }

  it('serves a found item from memory, the same buffer, until maxAgeMs has passed', async () => {
    const items = new Map([[req.url, utf8.encode('v1')]]);
    const inner = counting(items);
    let t = 0;
    const cache = memoryCache(inner.source, { maxAgeMs: 1000, now: () => t });
    const a = await cache.get(req);
    const b = await cache.get(req);
    expect(inner.calls()).toBe(1);
    expect(b!.body).toBe(a!.body);
    items.set(req.url, utf8.encode('v2'));
    t = 999;
    expect(utf8.decode((await cache.get(req))!.body)).toBe('v1');
    t = 1000;
    expect(utf8.decode((await cache.get(req))!.body)).toBe('v2');
    expect(inner.calls()).toBe(2);
  });

  it('shares one lookup between concurrent requests', async () => {
    const inner = counting(new Map([[req.url, utf8.encode('v1')]]));
    const cache = memoryCache(inner.source);
    await Promise.all([cache.get(req), cache.get(req), cache.get(req)]);
    expect(inner.calls()).toBe(1);
  });

  it('keeps neither misses nor failures', async () => {
    const items = new Map<string, Uint8Array>();
    const inner = counting(items);
    const cache = memoryCache(inner.source);
    expect(await cache.get(req)).toBeUndefined();
    items.set(req.url, utf8.encode('v1'));
    inner.failNext(true);
    await expect(cache.get(req)).rejects.toThrow('disk gone');
    inner.failNext(false);
    expect(utf8.decode((await cache.get(req))!.body)).toBe('v1');
    expect(inner.calls()).toBe(3);
  });

  it('tells requests apart by URL and file names, and forgets the oldest beyond maxEntries', async () => {
    const other = { url: `${req.url}1`, files: req.files };
    const inner = counting(
      new Map([
        [req.url, utf8.encode('a')],
        [other.url, utf8.encode('b')],
      ]),
    );
    const cache = memoryCache(inner.source, { maxEntries: 1 });
    expect(utf8.decode((await cache.get(req))!.body)).toBe('a');
    expect(utf8.decode((await cache.get(other))!.body)).toBe('b');
    expect(utf8.decode((await cache.get(req))!.body)).toBe('a');
    expect(inner.calls()).toBe(3);
  });
});
