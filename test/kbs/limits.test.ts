/** Rate limiting, and the operational endpoints: /metrics, /openapi.json, /healthz, /readyz. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { sampleAttester, type TestBroker, testBroker, until } from './helpers.js';

describe('rate limiting', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true, rateLimit: { perSecond: 5, burst: 5 } });
  });
  afterAll(() => b.close());

  it('answers the 6th quick request with 429 and retry-after, then recovers', async () => {
    // Sent together, so the bucket (5 per second) has no time to refill in between.
    const responses = await Promise.all(
      Array.from({ length: 6 }, () =>
        fetch(new URL('/kbs/v0/auth', b.url), {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ version: '0.4.0', tee: 'sample' }),
        }),
      ),
    );
    expect(responses.map((r) => r.status).sort()).toEqual([200, 200, 200, 200, 200, 429]);
    const refused = responses.find((r) => r.status === 429);
    expect(refused!.headers.get('retry-after')).toBe('1');
    expect(refused!.headers.get('content-type')).toMatch(/problem\+json/);
    expect((await refused!.json()).type).toMatch(/rate-limited/);
    // The bucket refills at 5 per second.
    const metrics = await until(async () => {
      const r = await fetch(new URL('/metrics', b.url));
      return r.status === 200 ? r.text() : undefined;
    }, 'the rate limit to lift');
    expect(metrics).toMatch(/^kbs_rate_limited_total [1-9]\d*$/m);
  });
});

describe('rate limiting and health probes', () => {
  const metrics = (b: TestBroker, from?: string) =>
    fetch(new URL('/metrics', b.url), from ? { headers: { 'x-forwarded-for': from } } : {}).then(
      (r) => r.status,
    );

  it('never limits /healthz, even for a client whose bucket is empty', async () => {
    // A bucket that refills once per 100 s: nothing comes back during the test.
    const b = await testBroker({ rateLimit: { perSecond: 0.01, burst: 2 } });
    try {
      expect([await metrics(b), await metrics(b), await metrics(b)]).toEqual([200, 200, 429]);
      const probes = await Promise.all(
        Array.from({ length: 50 }, () => fetch(new URL('/healthz', b.url)).then((r) => r.status)),
      );
      expect(probes.filter((s) => s !== 200)).toEqual([]);
      expect(await metrics(b)).toBe(429);
    } finally {
      await b.close();
    }
  });

  it('answers a flood of /readyz with a few database checks, not one per probe', async () => {
    // /readyz is not rate-limited; each probe used to run its own query on a pooled connection.
    const b = await testBroker({ rateLimit: { perSecond: 0.01, burst: 2 } });
    try {
      let pings = 0;
      const ping = b.store.ping.bind(b.store);
      b.store.ping = async () => {
        pings++;
        await new Promise((r) => setTimeout(r, 50));
        return ping();
      };
      const probes = await Promise.all(
        Array.from({ length: 100 }, () => fetch(new URL('/readyz', b.url)).then((r) => r.status)),
      );
      expect(probes.filter((s) => s !== 200)).toEqual([]);
      // One check answers the probes that arrive while it runs and for a second after; a slow
      // machine may spread the hundred probes over a few seconds.
      expect(pings).toBeGreaterThanOrEqual(1);
      expect(pings).toBeLessThan(10);
    } finally {
      await b.close();
    }
  });

  it('keys the bucket on X-Forwarded-For only from a configured proxy', async () => {
    const open = await testBroker({ rateLimit: { perSecond: 0.01, burst: 2 } });
    const proxied = await testBroker({
      rateLimit: { perSecond: 0.01, burst: 2 },
      trustProxy: ['127.0.0.0/8'],
    });
    try {
      // Not trusted: a forged header does not buy a fresh bucket.
      expect([
        await metrics(open, '10.0.0.1'),
        await metrics(open, '10.0.0.2'),
        await metrics(open, '10.0.0.3'),
      ]).toEqual([200, 200, 429]);
      // Behind the trusted proxy: each real client has its own bucket.
      expect([
        await metrics(proxied, '10.0.0.1'),
        await metrics(proxied, '10.0.0.1'),
        await metrics(proxied, '10.0.0.1'),
        await metrics(proxied, '10.0.0.2'),
      ]).toEqual([200, 200, 429, 200]);
    } finally {
      await open.close();
      await proxied.close();
    }
  });
});

describe('operational endpoints', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    expect(
      (await b.call('PUT', '/admin/v1/resources/owner/keys/k', await b.admin(), new Uint8Array([1, 2])))
        .status,
    ).toBe(201);
  });
  afterAll(() => b.close());

  it('/healthz is 200', async () => {
    const r = await fetch(new URL('/healthz', b.url));
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ok' });
  });

  it('/readyz is 200 while the store answers', async () => {
    const r = await fetch(new URL('/readyz', b.url));
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ready' });
  });

  it('/metrics shows every metric with HELP, TYPE and zeros before the first event', async () => {
    const fresh = await testBroker({ devMode: true });
    try {
      const text = await (await fetch(new URL('/metrics', fresh.url))).text();
      for (const [name, type] of [
        ['kbs_rate_limited_total', 'counter'],
        ['kbs_store_unavailable_total', 'counter'],
        ['kbs_internal_errors_total', 'counter'],
        ['kbs_auth_total', 'counter'],
        ['kbs_attest_total', 'counter'],
        ['kbs_resource_total', 'counter'],
        ['kbs_attest_seconds', 'histogram'],
      ]) {
        expect(text).toMatch(new RegExp(`^# HELP ${name} \\S`, 'm'));
        expect(text).toContain(`# TYPE ${name} ${type}\n`);
      }
      for (const zero of [
        'kbs_rate_limited_total 0',
        'kbs_internal_errors_total 0',
        'kbs_store_unavailable_total{code="unavailable"} 0',
        'kbs_store_unavailable_total{code="outcome-unknown"} 0',
        'kbs_auth_total{tee="sample"} 0',
        'kbs_attest_total{result="ok"} 0',
        'kbs_resource_total{result="released"} 0',
        'kbs_attest_seconds_bucket{le="+Inf"} 0',
        'kbs_attest_seconds_sum 0',
        'kbs_attest_seconds_count 0',
      ])
        expect(text.split('\n')).toContain(zero);
    } finally {
      await fresh.close();
    }
  });

  it('/metrics counts a release', async () => {
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    await client.getResource('owner/keys/k');
    await expect(client.getResource('owner/keys/none')).rejects.toMatchObject({ status: 403 });
    const r = await fetch(new URL('/metrics', b.url));
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await r.text();
    expect(text).toMatch(/^kbs_auth_total\{tee="sample"\} 1$/m);
    expect(text).toMatch(/^kbs_attest_total\{result="ok"\} 1$/m);
    expect(text).toMatch(/^kbs_resource_total\{result="released"\} 1$/m);
    expect(text).toMatch(/^kbs_resource_total\{result="denied"\} 1$/m);
    expect(text).toMatch(/^kbs_attest_seconds_count 1$/m);
    expect(text).toMatch(/^# TYPE kbs_attest_seconds histogram$/m);
  });

  it('/openapi.json is valid JSON documenting every route', async () => {
    const r = await fetch(new URL('/openapi.json', b.url));
    expect(r.status).toBe(200);
    const doc = JSON.parse(await r.text());
    expect(doc.openapi).toMatch(/^3\./);
    const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(
      ([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`),
    );
    expect(documented.sort()).toEqual(
      [
        'POST /kbs/v0/auth',
        'POST /kbs/v0/attest',
        'GET /kbs/v0/resource/{path}',
        'GET /cloister/v1/train/{job}/checkpoint',
        'POST /cloister/v1/train/{job}/checkpoint',
        'POST /cloister/v1/train/{job}/receipt',
        'GET /cloister/v1/train/{job}/key',
        'GET /admin/v1/resources',
        'PUT /admin/v1/resources/{path}',
        'POST /admin/v1/resources/{path}',
        'DELETE /admin/v1/resources/{path}',
        'GET /admin/v1/policies',
        'PUT /admin/v1/policies',
        'DELETE /admin/v1/policies',
        'POST /admin/v1/policy/evaluate',
        'GET /admin/v1/refvalues',
        'POST /admin/v1/refvalues',
        'DELETE /admin/v1/refvalues',
        'PUT /admin/v1/repositories/{repository}/owner',
        'GET /admin/v1/log/entries',
        'GET /admin/v1/log/bundle',
        'POST /admin/v1/log/checkpoint',
        'POST /admin/v1/tokens/revoke',
        'GET /admin/v1/tokens/revoked',
        'GET /.well-known/cloister-kbs',
        'GET /healthz',
        'GET /readyz',
        'GET /metrics',
      ].sort(),
    );
    // Every documented route exists on the server.
    for (const op of documented) {
      const [method, path] = op.split(' ') as [string, string];
      // OpenAPI's {name} is Fastify's :name, and the resource path is a wildcard.
      const url = path.replace('{path}', '*').replace(/\{(\w+)\}/g, ':$1');
      expect([op, b.app.hasRoute({ method, url })]).toEqual([op, true]);
    }
  });
});
