import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { confidentialFetch } from '../../src/client/fetch.js';
import {
  createGateway,
  GatewayError,
  OHTTP_CHUNKED_RESPONSE_TYPE,
  OHTTP_RESPONSE_TYPE,
} from '../../src/infer/gateway.js';
import {
  ChunkedRequestSealer,
  ChunkedResponseOpener,
  DATE_PROBLEM,
  decapsulateResponse,
  decodeResponse,
  type ExchangeContext,
  encapsulateRequest,
  encodeRequest,
  encodeVarint,
  generateGatewayKey,
  type KeyConfig,
  type OhttpBackend,
  ReplayCache,
  StreamedResponseDecoder,
  webCryptoBackend,
} from '../../src/ohttp/index.js';
import { nodeBackend } from '../../src/ohttp/node.js';
import { concatBytes, utf8 } from '../../src/util/bytes.js';
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

function gatewayWith(ohttp: OhttpBackend | undefined, now?: () => number) {
  return createGateway({
    keys: [key],
    replay: new ReplayCache({ windowMs: 60_000, maxEntries: 100 }),
    maxClockSkewMs: 30_000,
    handler,
    receipts: { key: receiptKey, identity: 'test' },
    ...(ohttp ? { ohttp } : {}),
    ...(now ? { now } : {}),
  });
}

function inner(path: string, content = '', date: string | null = new Date().toUTCString()) {
  return encodeRequest({
    method: 'POST',
    path,
    authority: 'x',
    headers: date === null ? [] : [['date', date]],
    content: utf8.encode(content),
  });
}

/** A chunked request of `bytes`, in chunks of at most `size` (the last one final). */
async function chunkedRequest(config: KeyConfig, bytes: Uint8Array, backend: OhttpBackend, size = 7) {
  const sealer = await ChunkedRequestSealer.create(config, { backend });
  const parts = [sealer.header];
  let at = 0;
  for (; bytes.length - at > size; at += size) parts.push(await sealer.seal(bytes.subarray(at, at + size)));
  parts.push(await sealer.seal(bytes.subarray(at), true));
  return { parts, context: sealer.context };
}

/** Reads a chunked response to the end: the head, the content as text, the trailers. */
async function readChunked(context: ExchangeContext, body: ReadableStream<Uint8Array>) {
  const opener = new ChunkedResponseOpener(context);
  const decoder = new StreamedResponseDecoder();
  const events = [];
  const reader = body.getReader();
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    for (const p of await opener.push(r.value)) events.push(...decoder.push(p));
  }
  events.push(...decoder.push(await opener.end()), ...decoder.end());
  const text = events.flatMap((e) => (e.type === 'content' ? [utf8.decode(e.bytes)] : [])).join('');
  return { head: events[0], text };
}

async function* pieces(parts: Uint8Array[]) {
  for (const p of parts) yield p;
}

describe.each(PAIRS)('createGateway: %s', (_name, gatewayBackend, clientBackend) => {
  const counted = gatewayBackend && counting(gatewayBackend);
  const gateway = gatewayWith(counted?.backend);
  const backend = clientBackend ?? webCryptoBackend;
  const signal = new AbortController().signal;

  it('answers a whole response', async () => {
    const sent = await encapsulateRequest(key.config, inner('/whole', 'hello'), { backend });
    const out = await gateway({ chunked: false, body: sent.encapsulated }, signal);
    expect(out).toMatchObject({ contentType: OHTTP_RESPONSE_TYPE, incremental: false });
    const res = decodeResponse(await decapsulateResponse(sent.context, out.body as Uint8Array));
    expect(JSON.parse(utf8.decode(res.content))).toEqual({ echo: 'hello' });
    if (counted) expect(counted.calls).toMatchObject({ setupRecipient: 1, aeadKey: 1 });
  });

  it('streams a chunked response to a chunked request, opened chunk by chunk as it arrives', async () => {
    const { parts, context } = await chunkedRequest(key.config, inner('/stream'), backend);
    const out = await gateway({ chunked: true, body: pieces(parts) }, signal);
    expect(out).toMatchObject({ contentType: OHTTP_CHUNKED_RESPONSE_TYPE, incremental: true });
    const { head, text } = await readChunked(context, out.body as ReadableStream<Uint8Array>);
    expect(head).toMatchObject({ type: 'head', status: 200 });
    expect(text).toBe('data: one\n\ndata: two\n\ndata: three\n\n');
  });

  it("takes an indeterminate-length Binary HTTP request in chunks, as ohttp-ts's ChunkedOHTTPClient sends", async () => {
    const lp = (t: string) => concatBytes(encodeVarint(utf8.encode(t).length), utf8.encode(t));
    const date = new Date().toUTCString();
    // RFC 9292 §3.2: framing 2, control data, fields ended by 0, content chunks ended by 0, no trailers.
    const indeterminate = concatBytes(
      encodeVarint(2),
      ...['POST', 'https', 'x', '/whole'].map(lp),
      lp('date'),
      lp(date),
      encodeVarint(0),
      lp('stream'),
      lp('ed in'),
      encodeVarint(0),
      encodeVarint(0),
    );
    const { parts, context } = await chunkedRequest(key.config, indeterminate, backend, 16_384);
    const out = await gateway({ chunked: true, body: pieces(parts) }, signal);
    const { text } = await readChunked(context, out.body as ReadableStream<Uint8Array>);
    expect(JSON.parse(text)).toEqual({ echo: 'streamed in' });
  });

  it('a chunked request for a whole answer still gets a chunked response (the draft requires it)', async () => {
    const { parts, context } = await chunkedRequest(key.config, inner('/whole', 'in chunks'), backend);
    const out = await gateway({ chunked: true, body: concatBytes(...parts) }, signal);
    expect(out.contentType).toBe(OHTTP_CHUNKED_RESPONSE_TYPE);
    const { text } = await readChunked(context, out.body as ReadableStream<Uint8Array>);
    expect(JSON.parse(text)).toEqual({ echo: 'in chunks' });
  });

  it('a plain RFC 9458 request for a stream gets one message/ohttp-res holding the whole stream', async () => {
    const sent = await encapsulateRequest(key.config, inner('/stream'), { backend });
    const out = await gateway({ chunked: false, body: sent.encapsulated }, signal);
    expect(out).toMatchObject({ contentType: OHTTP_RESPONSE_TYPE, incremental: false });
    const res = decodeResponse(await decapsulateResponse(sent.context, out.body as Uint8Array));
    expect(res.headers).toContainEqual(['content-type', 'text/event-stream']);
    expect(utf8.decode(res.content)).toBe('data: one\n\ndata: two\n\ndata: three\n\n');
  });

  it('refuses a tampered request, plain or chunked, as bad_ohttp in the clear', async () => {
    const sent = await encapsulateRequest(key.config, inner('/whole'), { backend });
    const bad = sent.encapsulated.slice();
    bad[bad.length - 1]! ^= 1;
    const err = await gateway({ chunked: false, body: bad }, signal).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GatewayError);
    expect(err).toMatchObject({ status: 400, code: 'bad_ohttp' });
    // A chunked request sealed under the plain label, and a plain one sent as chunked.
    const asChunked = await gateway({ chunked: true, body: sent.encapsulated }, signal).catch((e) => e);
    expect(asChunked).toMatchObject({ status: 400, code: 'bad_ohttp' });
    const { parts } = await chunkedRequest(key.config, inner('/whole'), backend);
    const cut = await gateway({ chunked: true, body: pieces(parts.slice(0, -1)) }, signal).catch((e) => e);
    expect(cut).toMatchObject({ status: 400, code: 'bad_ohttp' });
  });
});

describe('refusals after decryption come back encrypted (RFC 9458 §5.2)', () => {
  const signal = new AbortController().signal;

  async function refusal(gateway: ReturnType<typeof gatewayWith>, request: Uint8Array) {
    const sent = await encapsulateRequest(key.config, request);
    const out = await gateway({ chunked: false, body: sent.encapsulated }, signal);
    expect(out.contentType).toBe(OHTTP_RESPONSE_TYPE);
    const res = decodeResponse(await decapsulateResponse(sent.context, out.body as Uint8Array));
    return { res, problem: JSON.parse(utf8.decode(res.content)), sent };
  }

  it("a missing or stale Date: 400 with the date problem type and the gateway's Date", async () => {
    const gateway = gatewayWith(nodeBackend);
    for (const date of [null, new Date(Date.now() - 3_600_000).toUTCString(), 'not a date']) {
      const { res, problem } = await refusal(gateway, inner('/whole', '', date));
      expect(res.status).toBe(400);
      expect(res.headers).toContainEqual(['content-type', 'application/problem+json']);
      expect(problem.type).toBe(DATE_PROBLEM);
      const served = res.headers.find(([n]) => n === 'date')?.[1];
      expect(Math.abs(Date.parse(served!) - Date.now())).toBeLessThan(60_000);
    }
  });

  it('a replay: 400 replay inside the encryption; a bad inner message: 400 bad_inner_request', async () => {
    const gateway = gatewayWith(nodeBackend);
    const sent = await encapsulateRequest(key.config, inner('/whole'));
    await gateway({ chunked: false, body: sent.encapsulated }, signal);
    const again = await gateway({ chunked: false, body: sent.encapsulated }, signal);
    const res = decodeResponse(await decapsulateResponse(sent.context, again.body as Uint8Array));
    expect(res.status).toBe(400);
    expect(JSON.parse(utf8.decode(res.content))).toMatchObject({ title: 'replay' });
    const { res: bad, problem } = await refusal(gateway, utf8.encode('not binary http'));
    expect(bad.status).toBe(400);
    expect(problem.title).toBe('bad_inner_request');
    // RFC 9458 §5.1: the gateway MUST refuse a 100-continue expectation.
    const expecting = encodeRequest({
      method: 'POST',
      path: '/whole',
      headers: [
        ['date', new Date().toUTCString()],
        ['expect', '100-continue'],
      ],
      content: utf8.encode('x'),
    });
    const { res: expect417, problem: p417 } = await refusal(gateway, expecting);
    expect(expect417.status).toBe(417);
    expect(p417.title).toBe('expectation_failed');
  });

  it('a captured request stays refused when the clock is stepped forward 125 s and back', async () => {
    let clock = Date.now();
    const gateway = gatewayWith(nodeBackend, () => clock);
    const captured = await encapsulateRequest(
      key.config,
      inner('/whole', 'once', new Date(clock).toUTCString()),
    );
    const first = await gateway({ chunked: false, body: captured.encapsulated }, signal);
    expect(decodeResponse(await decapsulateResponse(captured.context, first.body as Uint8Array)).status).toBe(
      200,
    );
    clock += 125_000; // a bad time source steps the clock forward: a fresh request is accepted then
    await gateway(
      {
        chunked: false,
        body: (await encapsulateRequest(key.config, inner('/whole', '', new Date(clock).toUTCString())))
          .encapsulated,
      },
      signal,
    );
    clock -= 125_000; // and back
    const replayed = await gateway({ chunked: false, body: captured.encapsulated }, signal);
    const res = decodeResponse(await decapsulateResponse(captured.context, replayed.body as Uint8Array));
    expect(res.status).toBe(400);
    // Refused by the Date floor (the request dated +125 s moved it) or as a replay: never answered again.
    expect(['replay', 'date_out_of_window']).toContain(JSON.parse(utf8.decode(res.content)).title);
    // Honest clients (right clocks) are refused while the gateway's clock is off, and served again
    // once it is back; the capture stays refused as a replay.
    let clock2 = Date.now();
    const honest = () => new Date(Date.now()).toUTCString();
    const g2 = gatewayWith(nodeBackend, () => clock2);
    const c2 = await encapsulateRequest(key.config, inner('/whole', 'twice', honest()));
    const status = async (body: Uint8Array, ctx: ExchangeContext) => {
      const out = await g2({ chunked: false, body }, signal);
      const r = decodeResponse(await decapsulateResponse(ctx, out.body as Uint8Array));
      return r.status === 200 ? 200 : JSON.parse(utf8.decode(r.content)).title;
    };
    expect(await status(c2.encapsulated, c2.context)).toBe(200);
    clock2 += 125_000;
    const during = await encapsulateRequest(key.config, inner('/whole', '', honest()));
    expect(await status(during.encapsulated, during.context)).toBe('date_out_of_window');
    clock2 -= 125_000;
    const after = await encapsulateRequest(key.config, inner('/whole', '', honest()));
    expect(await status(after.encapsulated, after.context)).toBe(200);
    expect(await status(c2.encapsulated, c2.context)).toBe('replay');
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
