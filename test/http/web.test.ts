import { request } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHttp } from '../../src/http/index.js';
import { clientGone, rawBodies, readBody, sendResponse, webRequest } from '../../src/http/web.js';

class TooLarge extends Error {}

let app: FastifyInstance;
let url: string;
const cuts: unknown[] = [];
let gone: AbortSignal | undefined;

const pause = () => new Promise((r) => setTimeout(r, 20));

/** A body that yields `before` pieces, a pause apart so that they reach the client, and then fails. */
function failing(before: number): ReadableStream<Uint8Array> {
  let n = 0;
  return new ReadableStream({
    async pull(c) {
      if (n++ >= before) return c.error(new Error('failed mid-body'));
      if (n > 1) await pause();
      c.enqueue(new TextEncoder().encode(`piece ${n}\n`));
    },
  });
}

/** A body that never ends, until it is cancelled. */
function endless(): ReadableStream<Uint8Array> {
  return new ReadableStream({
    async pull(c) {
      await pause();
      c.enqueue(Uint8Array.of(1));
    },
  });
}

beforeAll(async () => {
  app = createHttp({ bodyLimit: 1 << 20 });
  rawBodies(app);
  app.setErrorHandler((e, _req, reply) =>
    reply.code(e instanceof TooLarge ? 413 : 500).send({ refused: (e as Error).message }),
  );
  app.post('/echo', async (req, reply) => {
    const body = await readBody(req, 16, () => new TooLarge('over 16 bytes'));
    const web = webRequest(req, body, clientGone(reply));
    return sendResponse(reply, new Response(await web.text(), { headers: { 'x-seen': web.method } }), {
      'x-extra': '1',
    });
  });
  app.get('/late', (_req, reply) => sendResponse(reply, new Response(failing(2)), {}, (e) => cuts.push(e)));
  app.get('/early', (_req, reply) => sendResponse(reply, new Response(failing(0)), {}, (e) => cuts.push(e)));
  app.get('/forever', (_req, reply) => {
    gone = clientGone(reply);
    return sendResponse(reply, new Response(endless()));
  });
  url = await app.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  const closing = app.close();
  app.server.closeAllConnections();
  await closing;
});

/** Status, body and whether the response ended cleanly, as node:http sees it. */
function get(path: string): Promise<{ status: number; body: string; complete: boolean }> {
  return new Promise((resolve, reject) => {
    request(`${url}${path}`, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      const done = () => resolve({ status: res.statusCode!, body, complete: res.complete });
      res.on('end', done);
      res.on('error', done);
      res.on('aborted', done);
    })
      .on('error', reject)
      .end();
  });
}

describe('web Requests and Responses on the Fastify stack', () => {
  it('a raw body of any media type reaches the handler; a web Response goes out with its headers', async () => {
    const res = await fetch(`${url}/echo`, {
      method: 'POST',
      headers: { 'content-type': 'application/weird' },
      body: 'hello',
    });
    expect([res.status, await res.text()]).toEqual([200, 'hello']);
    expect([res.headers.get('x-seen'), res.headers.get('x-extra')]).toEqual(['POST', '1']);
  });

  it('a body over the limit is refused with the caller’s error, declared or streamed', async () => {
    const declared = await fetch(`${url}/echo`, { method: 'POST', body: 'x'.repeat(17) });
    expect([declared.status, await declared.json()]).toEqual([413, { refused: 'over 16 bytes' }]);
    const streamed = await fetch(`${url}/echo`, {
      method: 'POST',
      body: new ReadableStream({
        start(c) {
          c.enqueue(new Uint8Array(10));
          c.enqueue(new Uint8Array(10));
          c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect(streamed.status).toBe(413);
  });

  it('a body that fails after its first bytes cuts the connection; one that fails before is a refusal', async () => {
    const late = await get('/late');
    expect([late.status, late.complete]).toEqual([200, false]);
    expect(late.body).toContain('piece 1');
    expect(cuts).toHaveLength(1);
    const early = await get('/early');
    expect([early.status, early.complete, JSON.parse(early.body)]).toEqual([
      500,
      true,
      { refused: 'failed mid-body' },
    ]);
    expect(cuts).toHaveLength(1);
  });

  it('a client that leaves aborts the signal', async () => {
    const ac = new AbortController();
    const res = await fetch(`${url}/forever`, { signal: ac.signal });
    const reader = res.body!.getReader();
    await reader.read();
    ac.abort();
    await expect.poll(() => gone?.aborted, { timeout: 5000 }).toBe(true);
  });
});
