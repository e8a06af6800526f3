import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { confidentialFetch } from '../../src/client/fetch.js';
import { createGateway, GatewayError, OHTTP_CHUNKED_RESPONSE_TYPE } from '../../src/infer/gateway.js';
import {
  ChunkedResponseOpener,
  decapsulateResponse,
  decodeResponse,
  encapsulateRequest,
  encodeRequest,
  generateGatewayKey,
  type OhttpBackend,
  ReplayCache,
  StreamedResponseDecoder,
  webCryptoBackend,
} from '../../src/ohttp/index.js';
import { nodeBackend } from '../../src/ohttp/node.js';
import { utf8 } from '../../src/util/bytes.js';
import { counting } from '../ohttp/helpers.js';
import { type Harness, NO_COLLATERAL, SAMPLE_POLICY, startHarness } from './harness.js';

const BACKENDS: [string, OhttpBackend | undefined][] = [
  ['default (Web Crypto)', undefined],
  ['node', nodeBackend],
];
const PAIRS = BACKENDS.flatMap(([g, gateway]) =>
  BACKENDS.map(([c, client]) => [`${g} gateway, ${c} client`, gateway, client] as const),
);

const key = await generateGatewayKey(5);
const receiptKey = (
  (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
    'sign',
    'verify',
  ])) as CryptoKeyPair
).privateKey;

/** A handler that answers /whole with JSON and /stream with three server-sent events. */
async function handler(req: Request): Promise<Response> {
  if (new URL(req.url).pathname === '/whole') return Response.json({ echo: await req.text() });
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (const w of ['one', 'two', 'three']) c.enqueue(utf8.encode(`data: ${w}\n\n`));
      c.close();
    },
  });
  return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
}

function gatewayWith(ohttp: OhttpBackend | undefined) {
  return createGateway({
    keys: [key],
    replay: new ReplayCache({ windowMs: 60_000, maxEntries: 100 }),
    maxClockSkewMs: 30_000,
    handler,
    receipts: { key: receiptKey, identity: 'test' },
    ...(ohttp ? { ohttp } : {}),
  });
}

function inner(path: string, content = '') {
  return encodeRequest({
    method: 'POST',
    path,
    authority: 'x',
    headers: [['date', new Date().toUTCString()]],
    content: utf8.encode(content),
  });
}

describe.each(PAIRS)('createGateway: %s', (_name, gatewayBackend, clientBackend) => {
  const counted = gatewayBackend && counting(gatewayBackend);
  const gateway = gatewayWith(counted?.backend);
  const backend = clientBackend ?? webCryptoBackend;
  const signal = new AbortController().signal;

  it('answers a whole response', async () => {
    const sent = await encapsulateRequest(key.config, inner('/whole', 'hello'), { backend });
    const out = await gateway(sent.encapsulated, signal);
    expect(out.body).toBeInstanceOf(Uint8Array);
    const res = decodeResponse(await decapsulateResponse(sent.context, out.body as Uint8Array));
    expect(JSON.parse(utf8.decode(res.content))).toEqual({ echo: 'hello' });
    if (counted) expect(counted.calls).toMatchObject({ setupRecipient: 1, aeadKey: 1 });
  });

  it('streams a chunked response', async () => {
    const sent = await encapsulateRequest(key.config, inner('/stream'), { backend });
    const out = await gateway(sent.encapsulated, signal);
    expect(out.contentType).toBe(OHTTP_CHUNKED_RESPONSE_TYPE);
    const opener = new ChunkedResponseOpener(sent.context);
    const decoder = new StreamedResponseDecoder();
    const events = [];
    const reader = (out.body as ReadableStream<Uint8Array>).getReader();
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      for (const p of await opener.push(r.value)) events.push(...decoder.push(p));
    }
    events.push(...decoder.push(await opener.end()), ...decoder.end());
    expect(events[0]).toMatchObject({ type: 'head', status: 200 });
    const text = events.flatMap((e) => (e.type === 'content' ? [utf8.decode(e.bytes)] : [])).join('');
    expect(text).toBe('data: one\n\ndata: two\n\ndata: three\n\n');
  });

  it('refuses a tampered request as bad_ohttp', async () => {
    const sent = await encapsulateRequest(key.config, inner('/whole'), { backend });
    const bad = sent.encapsulated.slice();
    bad[bad.length - 1]! ^= 1;
    const err = await gateway(bad, signal).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GatewayError);
    expect(err).toMatchObject({ status: 400, code: 'bad_ohttp' });
  });
});

describe('confidentialFetch with the node backend against the server (which uses it too)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h.server.close();
  });

  it('chats and streams', async () => {
    const client = counting(nodeBackend);
    const f = confidentialFetch({
      url: h.server.url,
      policy: SAMPLE_POLICY,
      collateral: NO_COLLATERAL,
      ohttp: client.backend,
    });
    const openai = new OpenAI({ baseURL: `${h.server.url}/v1`, apiKey: 'unused', fetch: f, maxRetries: 0 });
    const chat = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'alpha beta' }],
    });
    expect(chat.choices[0]!.message.content).toBe(' alpha beta done');
    const stream = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'gamma delta' }],
      stream: true,
    });
    const deltas: string[] = [];
    for await (const c of stream) if (c.choices[0]?.delta.content) deltas.push(c.choices[0].delta.content);
    expect(deltas.join('')).toBe(' gamma delta done');
    // Both requests sealed, and both responses (whole, then chunked) opened, with the given backend.
    expect(client.calls).toMatchObject({ setupSender: 2, aeadKey: 2 });
  });
});
