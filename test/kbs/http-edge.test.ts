/**
 * The broker's HTTP edge on the shared stack: the session cookie (@fastify/cookie), the rate limit
 * (@fastify/rate-limit) and the one table that gives every problem code its status.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StatusTable } from '../../src/http/index.js';
import type { KbsHttpCode } from '../../src/kbs/errors.js';
import { STATUS } from '../../src/kbs/server.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const SECRET = new TextEncoder().encode('the model key');

/** A fetch that sends the session cookie the way some clients do: among others, with attributes. */
function cookieJarFetch(rewrite: (cookie: string) => string): typeof fetch {
  return (input, init) => {
    const headers = new Headers(init?.headers);
    const cookie = headers.get('cookie');
    if (cookie) headers.set('cookie', rewrite(cookie));
    return fetch(input, { ...init, headers });
  };
}

describe('session cookie', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true, sessionTtlSeconds: 120 });
    expect((await b.call('PUT', '/admin/v1/resources/owner/keys/k', await b.admin(), SECRET)).status).toBe(
      201,
    );
  });
  afterAll(() => b.close());

  it('is set HttpOnly, SameSite=Strict, for /kbs/v0, living as long as the session', async () => {
    const r = await fetch(new URL('/kbs/v0/auth', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: '0.4.0', tee: 'sample' }),
    });
    expect(r.status).toBe(200);
    const set = r.headers.get('set-cookie')!;
    expect(set).toMatch(/^kbs-session-id=[A-Za-z0-9_-]{32};/);
    expect(set).toMatch(/; Max-Age=120(;|$)/);
    expect(set).toMatch(/; Path=\/kbs\/v0(;|$)/);
    expect(set).toMatch(/; HttpOnly(;|$)/);
    expect(set).toMatch(/; SameSite=Strict(;|$)/);
  });

  it('is found among other cookies, and when a client sends back the attributes as well', async () => {
    for (const rewrite of [
      (c: string) => `theme=dark; ${c}; lang=en`,
      (c: string) => `${c}; Max-Age=120; Path=/kbs/v0; HttpOnly; SameSite=Strict`,
    ]) {
      const client = new KbsClient({
        url: b.url,
        attester: await sampleAttester(),
        fetch: cookieJarFetch(rewrite),
      });
      expect(new TextDecoder().decode(await client.getResource('owner/keys/k'))).toBe('the model key');
    }
  });

  it('refuses a request whose only cookies are others with 401 no-session', async () => {
    const r = await fetch(new URL('/kbs/v0/resource/owner/keys/k', b.url), {
      headers: { cookie: 'theme=dark; kbs-session=x' },
    });
    expect(r.status).toBe(401);
    expect((await r.json()).type).toMatch(/\/no-session$/);
  });
});

describe('rate limit', () => {
  let b: TestBroker;
  beforeAll(async () => {
    // Two requests per 200 s window: nothing comes back during the test.
    b = await testBroker({ rateLimit: { perSecond: 0.01, burst: 2 } });
  });
  afterAll(() => b.close());

  it('answers 429 rate-limited with Retry-After until the window ends, also for unknown routes, never for probes', async () => {
    const ok = await fetch(new URL('/metrics', b.url));
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-ratelimit-remaining')).toBe('1');
    expect((await fetch(new URL('/no/such/route', b.url))).status).toBe(404);
    const refused = await fetch(new URL('/metrics', b.url));
    expect(refused.status).toBe(429);
    expect(refused.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    // The window is burst / perSecond = 200 s, and it began a moment ago.
    const retry = Number(refused.headers.get('retry-after'));
    expect(retry).toBeGreaterThan(190);
    expect(retry).toBeLessThanOrEqual(200);
    expect(await refused.json()).toMatchObject({
      type: 'https://cloister.dev/problems/rate-limited',
      status: 429,
      detail: expect.stringMatching(/too many requests/),
    });
    expect((await fetch(new URL('/no/such/route', b.url))).status).toBe(429);
    for (const probe of ['/healthz', '/readyz']) {
      const r = await fetch(new URL(probe, b.url));
      expect([probe, r.status, r.headers.get('x-ratelimit-limit')]).toEqual([probe, 200, null]);
    }
  });
});

describe('status table', () => {
  it('is total: a table that leaves a code out does not compile', () => {
    const { denied: _left, ...partial } = STATUS;
    // @ts-expect-error `denied` is missing
    const missing: StatusTable<KbsHttpCode> = partial;
    expect(Object.keys(missing)).not.toContain('denied');
    for (const [code, status] of Object.entries(STATUS)) {
      expect([code, Number.isInteger(status) && status >= 400 && status < 600]).toEqual([code, true]);
    }
  });

  describe('one refusal per status, over HTTP', () => {
    let b: TestBroker;
    let admin: string;
    beforeAll(async () => {
      b = await testBroker({ devMode: true, maxResourceBytes: 8 });
      admin = await b.admin();
    });
    afterAll(() => b.close());
    const problem = async (r: Response) => {
      const p = (await r.json()) as { type: string; status: number };
      expect(p.status).toBe(r.status);
      return [r.status, p.type.replace('https://cloister.dev/problems/', '')];
    };
    const auth = (body: string, type = 'application/json') =>
      fetch(new URL('/kbs/v0/auth', b.url), { method: 'POST', headers: { 'content-type': type }, body });

    it('400 malformed-request, malformed-json and bad-refvalue (a body its schema refuses)', async () => {
      expect(await problem(await auth('{"tee": "sample"}'))).toEqual([400, 'malformed-request']);
      expect(await problem(await auth('{"version": 4, "tee": "sample"}'))).toEqual([
        400,
        'malformed-request',
      ]);
      expect(await problem(await auth('{'))).toEqual([400, 'malformed-json']);
      const refvalue = await b.call('POST', '/admin/v1/refvalues', admin, {
        tee: 'sample',
        name: 'm',
        values: '00',
      });
      expect(await problem(refvalue)).toEqual([400, 'bad-refvalue']);
      const policy = await b.call('PUT', '/admin/v1/policies', admin, { source: 'true' });
      expect(await problem(policy)).toEqual([400, 'bad-scope']);
      const range = await b.call('GET', '/admin/v1/log/entries?from=-1', admin);
      expect(await problem(range)).toEqual([400, 'bad-range']);
    });

    it('401 no-session and no-admin-token; an unauthenticated admin request is 401 whatever its body', async () => {
      const attest = await fetch(new URL('/kbs/v0/attest', b.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      });
      expect(await problem(attest)).toEqual([401, 'no-session']);
      expect(await problem(await b.call('POST', '/admin/v1/refvalues', '', { values: 1 }))).toEqual([
        401,
        'no-admin-token',
      ]);
    });

    it('403 forbidden and denied', async () => {
      const auditor = await b.admin('global-auditor');
      expect(await problem(await b.call('POST', '/admin/v1/log/checkpoint', auditor))).toEqual([
        403,
        'forbidden',
      ]);
      const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
      await expect(client.getResource('owner/keys/none')).rejects.toMatchObject({
        status: 403,
        type: 'denied',
      });
    });

    it('404 unknown-resource and no-route; 409 conflict; 413 value-too-large; 415 unsupported-media-type', async () => {
      expect(await problem(await b.call('DELETE', '/admin/v1/resources/owner/keys/none', admin))).toEqual([
        404,
        'unknown-resource',
      ]);
      expect(await problem(await fetch(new URL('/nowhere', b.url)))).toEqual([404, 'no-route']);
      const put = () => b.call('PUT', '/admin/v1/resources/owner/keys/once', admin, SECRET.slice(0, 4));
      expect((await put()).status).toBe(201);
      expect(await problem(await put())).toEqual([409, 'conflict']);
      expect(await problem(await b.call('PUT', '/admin/v1/resources/owner/keys/big', admin, SECRET))).toEqual(
        [413, 'value-too-large'],
      );
      expect(await problem(await auth('x', 'text/plain'))).toEqual([415, 'unsupported-media-type']);
    });

    it('500 internal and 503 not-ready', async () => {
      const list = b.store.listResources.bind(b.store);
      b.store.listResources = async () => {
        throw new Error('a bug');
      };
      try {
        expect(await problem(await b.call('GET', '/admin/v1/resources', admin))).toEqual([500, 'internal']);
      } finally {
        b.store.listResources = list;
      }
      b.store.ping = async () => {
        throw new Error('down');
      };
      const r = await fetch(new URL('/readyz', b.url));
      expect(r.headers.get('retry-after')).toBe('2');
      expect(await problem(r)).toEqual([503, 'not-ready']);
    });
  });
});
