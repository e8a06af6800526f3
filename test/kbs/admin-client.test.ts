/** The admin API client the CLI and the demo share: bearer token, JSON and byte bodies, problems as errors. */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient, AdminClientError } from '../../src/kbs/admin-client.js';

const seen: { method?: string; url?: string; auth?: string; type?: string; body: string }[] = [];
const server = createServer(async (req: IncomingMessage, res) => {
  let body = '';
  for await (const c of req) body += c;
  seen.push({
    method: req.method,
    url: req.url,
    auth: req.headers.authorization,
    type: req.headers['content-type'],
    body,
  });
  if (req.url === '/gone') return void res.writeHead(204).end();
  if (req.url === '/text') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('line\n');
  if (req.url === '/forbidden')
    return void res.writeHead(403, { 'content-type': 'application/problem+json' }).end(
      JSON.stringify({
        type: 'https://cloister.dev/problems/forbidden',
        title: 'Forbidden',
        status: 403,
        detail: 'auditors cannot change anything',
      }),
    );
  if (req.url === '/empty-error') return void res.writeHead(502).end();
  res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
});
let url = '';
const unexpected = (): never => {
  throw new Error('expected the call to fail');
};
beforeAll(async () => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

describe('AdminClient', () => {
  it('sends the bearer token and JSON or byte bodies, and reads JSON, 204 and text answers', async () => {
    const c = new AdminClient(url, 'tok');
    expect(await c.call('PUT', '/json', { json: { a: 1 } })).toEqual({ ok: true });
    expect(await c.call('PUT', '/bytes', { bytes: new Uint8Array([104, 105]) })).toEqual({ ok: true });
    expect(await c.call('DELETE', '/gone')).toBeUndefined();
    expect(await c.text('/text')).toBe('line\n');
    expect(seen.slice(-4).map((s) => [s.method, s.url, s.auth, s.type, s.body])).toEqual([
      ['PUT', '/json', 'Bearer tok', 'application/json', '{"a":1}'],
      ['PUT', '/bytes', 'Bearer tok', 'application/octet-stream', 'hi'],
      ['DELETE', '/gone', 'Bearer tok', undefined, ''],
      ['GET', '/text', 'Bearer tok', undefined, ''],
    ]);
  });

  it("turns a problem answer into an error carrying the problem's status, type and detail", async () => {
    const e = await new AdminClient(url, 'tok')
      .call('POST', '/forbidden', { json: {} })
      .then(unexpected, (x: AdminClientError) => x);
    expect(e).toBeInstanceOf(AdminClientError);
    expect(e.message).toBe('POST /forbidden: 403 auditors cannot change anything');
    expect(e.code).toBe('refused');
    expect(e.problem).toEqual({
      status: 403,
      type: 'https://cloister.dev/problems/forbidden',
      detail: 'auditors cannot change anything',
    });
    const bare = await new AdminClient(url, 'tok')
      .text('/empty-error')
      .then(unexpected, (x: AdminClientError) => x);
    expect(bare.message).toBe('GET /empty-error: 502 Bad Gateway');
    expect(bare.problem).toEqual({ status: 502 });
  });

  it('says which broker could not be reached, and why', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const e = await new AdminClient(`http://127.0.0.1:${port}`, 'tok')
      .call('GET', '/x')
      .then(unexpected, (x: AdminClientError) => x);
    expect(e.code).toBe('unreachable');
    expect(e.message).toMatch(
      new RegExp(`^cannot reach the key broker at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
    );
  });
});
