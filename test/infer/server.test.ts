import { connect } from 'node:net';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { confidentialFetch, isRefusal, REFUSAL_TYPE } from '../../src/client/fetch.js';
import { parseClientPolicy } from '../../src/client/policy.js';
import { VerificationError } from '../../src/client/verify.js';
import { sseEvent } from '../../src/infer/openai.js';
import {
  ChunkedRequestSealer,
  ChunkedResponseOpener,
  decapsulateResponse,
  decodeKeyConfigList,
  decodeResponse,
  encapsulateRequest,
  encodeRequest,
  StreamedResponseDecoder,
} from '../../src/ohttp/index.js';
import { concatBytes, fromBase64 } from '../../src/util/bytes.js';
import type { ResponseReceipt } from '../../src/wire/inference-receipt.js';
import { ScriptedTextEngine } from './fake-engines.js';
import {
  EMBED_DIGEST,
  type Harness,
  NO_COLLATERAL,
  SAMPLE_POLICY,
  startHarness,
  TEXT_DIGEST,
} from './harness.js';

let h: Harness;
const GATEWAY = '/.well-known/ohttp-gateway';

beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.server.close();
});

/** A transport that records what an on-path observer (relay, load balancer) sees. */
function observed() {
  const seen: Uint8Array[] = [];
  const transport = async (input: RequestInfo | URL, init?: RequestInit) => {
    const res = await fetch(input, init);
    if (init?.body instanceof Uint8Array) seen.push(init.body);
    const body = new Uint8Array(await res.arrayBuffer());
    seen.push(body);
    return new Response(body, { status: res.status, headers: res.headers });
  };
  return { seen, transport: transport as typeof fetch };
}

/** The SDK and the openai package pointed at `of` (default: the shared harness). */
function client(extra: Partial<Parameters<typeof confidentialFetch>[0]> = {}, of: Harness = h) {
  const f = confidentialFetch({
    url: of.server.url,
    policy: SAMPLE_POLICY,
    collateral: NO_COLLATERAL,
    ...extra,
  });
  return {
    f,
    openai: new OpenAI({ baseURL: `${of.server.url}/v1`, apiKey: 'unused', fetch: f, maxRetries: 0 }),
  };
}

async function rawGateway(body: Uint8Array): Promise<Response> {
  return fetch(`${h.server.url}${GATEWAY}`, {
    method: 'POST',
    headers: { 'content-type': 'message/ohttp-req' },
    body: body.slice(),
  });
}

async function encapsulated(o: { date?: string | null; path?: string; body?: unknown } = {}) {
  const configs = decodeKeyConfigList(fromBase64(h.server.attestation.identity.ohttpKeys));
  const headers: [string, string][] = [['content-type', 'application/json']];
  if (o.date !== null) headers.push(['date', o.date ?? new Date().toUTCString()]);
  const inner = encodeRequest({
    method: 'POST',
    path: o.path ?? '/v1/chat/completions',
    authority: 'x',
    headers,
    content: new TextEncoder().encode(
      JSON.stringify(o.body ?? { model: 'tiny-llama', messages: [{ role: 'user', content: 'hi' }] }),
    ),
  });
  return encapsulateRequest(configs[0]!, inner);
}

describe('the official openai client through confidentialFetch', () => {
  it('lists models, chats, streams, completes and embeds, end to end encrypted', async () => {
    const { seen, transport } = observed();
    const { openai } = client({ fetch: transport });
    const models = await openai.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['tiny-llama', 'tiny-embed']);

    const chat = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'secret-word-alpha beta' }],
    });
    expect(chat.choices[0]!.message.content).toBe(' secret-word-alpha beta done');
    expect(chat.usage).toEqual({ prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 });

    const stream = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'secret-word-gamma delta' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const deltas: string[] = [];
    let usage: unknown;
    for await (const c of stream) {
      if (c.choices[0]?.delta.content) deltas.push(c.choices[0].delta.content);
      if (c.usage) usage = c.usage;
    }
    expect(deltas.join('')).toBe(' secret-word-gamma delta done');
    expect(deltas.length).toBe(3);
    expect(usage).toMatchObject({ completion_tokens: 3 });

    const completion = await openai.completions.create({
      model: 'tiny-llama',
      prompt: 'one two three',
      max_tokens: 2,
    });
    expect(completion.choices[0]!.text).toBe(' one two');
    expect(completion.choices[0]!.finish_reason).toBe('length');

    const emb = await openai.embeddings.create({ model: 'tiny-embed', input: ['a', 'secret-word-epsilon'] });
    expect(emb.data).toHaveLength(2);
    expect(Math.hypot(...emb.data[0]!.embedding)).toBeCloseTo(1, 5);

    // The observer saw every byte that crossed the wire and none of the prompts or replies.
    const wire = seen.map((b) => Buffer.from(b).toString('latin1')).join('\n');
    expect(seen.length).toBeGreaterThan(8);
    for (const word of ['secret-word', 'chat/completions', 'done']) expect(wire).not.toContain(word);
  });

  it('gives a verified receipt per response, streamed ones too', async () => {
    const receipts: ResponseReceipt[] = [];
    const { openai } = client({ onReceipt: (r) => receipts.push(r) });
    await openai.chat.completions.create({ model: 'tiny-llama', messages: [{ role: 'user', content: 'x' }] });
    const s = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'y' }],
      stream: true,
    });
    for await (const _ of s) {
      // drain
    }
    expect(receipts).toHaveLength(2);
    for (const r of receipts) {
      expect(r.modelDigest).toBe(TEXT_DIGEST);
      expect(r.status).toBe(200);
      expect(r.response).toMatch(/^sha256:[0-9a-f]{64}$/);
    }
    expect(receipts[0]!.request).not.toBe(receipts[1]!.request);
  });

  it('takes a URL string or object with a string or byte body, or a Request, alike', async () => {
    const { f } = client();
    const url = `${h.server.url}/v1/embeddings`;
    const json = JSON.stringify({ model: 'tiny-embed', input: 'the same words' });
    const headers = { 'content-type': 'application/json' };
    const answers = await Promise.all(
      [
        () => f(url, { method: 'POST', headers, body: json }),
        () => f(new URL(url), { method: 'post', headers, body: new TextEncoder().encode(json) }),
        () => f(new Request(url, { method: 'POST', headers, body: json })),
        () => f(url, { method: 'POST', headers, body: new Blob([json]) }),
      ].map(async (call) => {
        const r = await call();
        expect(r.status).toBe(200);
        return (await r.json()).data;
      }),
    );
    for (const a of answers) expect(a).toEqual(answers[0]);
    // The body is taken at the call: a caller reusing its buffer right after does not change it.
    const reused = Buffer.from(json);
    const pending = f(url, { method: 'POST', headers, body: reused });
    reused.fill(0x20);
    expect((await (await pending).json()).data).toEqual(answers[0]);
    // Refused as fetch refuses them, before anything is sent.
    await expect(f(url, { method: 'GET', body: json })).rejects.toThrow(TypeError);
    await expect(f(url, { method: 'TRACE' })).rejects.toThrow(TypeError);
    const withCredentials = new URL(url);
    withCredentials.username = 'user';
    await expect(f(withCredentials, { method: 'POST', headers, body: json })).rejects.toThrow(TypeError);
  });

  it('stops generation when the client goes away mid-stream', async () => {
    const slow = await startHarness({ text: new ScriptedTextEngine(2, 20) });
    const ac = new AbortController();
    const { openai } = client({}, slow);
    const long = Array.from({ length: 40 }, (_, i) => `w${i}`).join(' ');
    const s = await openai.chat.completions.create(
      { model: 'tiny-llama', messages: [{ role: 'user', content: long }], stream: true, max_tokens: 20 },
      { signal: ac.signal },
    );
    let n = 0;
    // The openai client ends the iteration quietly when its signal aborts.
    for await (const _ of s) if (++n === 2) ac.abort();
    expect(n).toBeLessThan(10);
    await expect.poll(() => slow.text.aborted, { timeout: 5000 }).toBe(1);
    await slow.server.close();
  });
});

describe('the client refuses servers its policy does not accept, before sending anything', () => {
  it('the default policy refuses the sample TEE: openai throws PermissionDeniedError with our reason and code, once', async () => {
    const { seen, transport } = observed();
    const f = confidentialFetch({
      url: h.server.url,
      policy: parseClientPolicy({}),
      collateral: NO_COLLATERAL,
      fetch: transport,
    });
    // The openai package's default retries: a refusal must not be one of the errors it retries.
    const openai = new OpenAI({ baseURL: `${h.server.url}/v1`, apiKey: 'unused', fetch: f });
    const refused = await openai.chat.completions
      .create({ model: 'tiny-llama', messages: [{ role: 'user', content: 'x' }] })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(refused).toMatchObject({
      status: 403,
      code: 'tee-not-allowed',
      type: REFUSAL_TYPE,
      message: expect.stringMatching(/^403 the server runs in a 'sample' TEE[^\n]*$/),
    });
    // Only the attestation document was fetched, once: no request body, no retry.
    expect(seen).toHaveLength(1);
  });

  it("with refusals: 'throw', a direct caller catches the VerificationError itself", async () => {
    const { seen, transport } = observed();
    const f = confidentialFetch({
      url: h.server.url,
      policy: parseClientPolicy({}),
      collateral: NO_COLLATERAL,
      fetch: transport,
      refusals: 'throw',
    });
    const refused = await f(`${h.server.url}/v1/models`).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(VerificationError);
    expect(refused).toMatchObject({ code: 'tee-not-allowed' });
    expect(seen).toHaveLength(1);
  });

  it('a model digest the policy does not allow is refused, another is used', async () => {
    const policy = parseClientPolicy({ tees: ['sample'], minStatus: 'warning', models: [EMBED_DIGEST] });
    const f = confidentialFetch({ url: h.server.url, policy, collateral: NO_COLLATERAL });
    // Answered in the client as a 403 in OpenAI's error shape: the request was never sent.
    const refused = await f(`${h.server.url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny-llama', messages: [] }),
    });
    expect(refused.status).toBe(403);
    expect(refused.headers.get('x-should-retry')).toBe('false');
    // Only the client's own refusals are refusals: the same answer from the network is not one.
    expect(isRefusal(refused)).toBe(true);
    expect(isRefusal(Response.json({ error: { type: REFUSAL_TYPE } }, { status: 403 }))).toBe(false);
    expect(await refused.json()).toEqual({
      error: {
        message: `the model 'tiny-llama' (${TEXT_DIGEST}) is not one the policy allows`,
        type: REFUSAL_TYPE,
        code: 'model',
        param: null,
      },
    });
    const ok = await f(`${h.server.url}/v1/embeddings`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny-embed', input: 'a' }),
    });
    expect(ok.status).toBe(200);
  });

  it('a measurement, software or GPU requirement that is not met is refused with the reason', async () => {
    for (const [p, code] of [
      [{ measurements: { measurement: ['00'] } }, 'measurement'],
      [{ software: { versions: ['9.9.9'] } }, 'software'],
      [{ requireGpu: true }, 'gpu'],
      [{ minStatus: 'affirming' }, 'status'],
    ] as const) {
      const policy = parseClientPolicy({ tees: ['sample'], minStatus: 'warning', ...p });
      const f = confidentialFetch({ url: h.server.url, policy, collateral: NO_COLLATERAL });
      await expect(f.server()).rejects.toMatchObject({ code });
    }
  });

  it('an attestation document whose identity was swapped does not bind', async () => {
    const doc = structuredClone(h.server.attestation);
    const other = await startHarness();
    doc.identity.ohttpKeys = other.server.attestation.identity.ohttpKeys;
    await other.server.close();
    const transport = (async () => Response.json(doc)) as unknown as typeof fetch;
    const f = confidentialFetch({
      url: h.server.url,
      policy: { ...SAMPLE_POLICY, fresh: false },
      collateral: NO_COLLATERAL,
      fetch: transport,
    });
    await expect(f.server()).rejects.toBeInstanceOf(VerificationError);
    await expect(f.server()).rejects.toMatchObject({ code: 'binding' });
  });

  it('refuses to send a request for another origin, even one that starts like the server', async () => {
    // The check comes before anything is fetched, so the base need not be listening.
    const f = confidentialFetch({
      url: 'http://127.0.0.1:4520',
      policy: SAMPLE_POLICY,
      collateral: NO_COLLATERAL,
      refusals: 'throw',
    });
    for (const other of ['http://elsewhere.example/v1/models', 'http://127.0.0.1:45203/v1/models']) {
      await expect(f(other, { method: 'GET' }), other).rejects.toMatchObject({ code: 'bad-request' });
    }
  });

  it('a stale document that does not answer our nonce is refused', async () => {
    const transport = (async () => Response.json(h.server.attestation)) as unknown as typeof fetch;
    const f = confidentialFetch({
      url: h.server.url,
      policy: SAMPLE_POLICY,
      collateral: NO_COLLATERAL,
      fetch: transport,
    });
    await expect(f.server()).rejects.toMatchObject({ code: 'nonce' });
  });
});

describe('what a relay can do to the client', () => {
  it('an answer on the path that is not sealed to the request never reaches the caller as a success', async () => {
    // A hostile relay forwards the attestation document untouched and answers the request itself.
    const forged = {
      choices: [{ index: 0, message: { role: 'assistant', content: 'forged by the relay' } }],
    };
    let relayed = 0;
    const relay = (async (input: RequestInfo | URL, init?: RequestInit) => {
      if (init?.method !== 'POST') return fetch(input, init);
      relayed++;
      return relayed === 1
        ? Response.json(forged)
        : new Response('{"type":"about:blank","title":"relay busy"}', {
            status: 503,
            headers: { 'content-type': 'application/problem+json' },
          });
    }) as typeof fetch;
    const { f, openai } = client({ fetch: relay });
    const ask = { model: 'tiny-llama', messages: [{ role: 'user' as const, content: 'hi' }] };
    await expect(
      (await f(`${h.server.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify(ask) })).json(),
    ).resolves.toMatchObject({
      error: { code: 'bad-response', message: expect.stringMatching(/answered 200/) },
    });
    // A refusal in the clear still reaches the caller, as the error it is.
    await expect(openai.chat.completions.create(ask)).rejects.toMatchObject({ status: 503 });
    expect(relayed).toBe(2);
  });
});

describe('bad input gets a clear 4xx and the server keeps serving', () => {
  it('malformed, unknown-key, replayed, undated and stale encapsulated requests', async () => {
    const junk = await rawGateway(crypto.getRandomValues(new Uint8Array(80)));
    expect([400, 422]).toContain(junk.status);
    expect(junk.headers.get('content-type')).toBe('application/problem+json');

    const { encapsulated: e } = await encapsulated();
    const wrongKey = e.slice();
    wrongKey[0] = (wrongKey[0]! + 1) & 0xff;
    const r422 = await rawGateway(wrongKey);
    expect(r422.status).toBe(422);
    expect((await r422.json()).type).toBe('https://iana.org/assignments/http-problem-types#ohttp-key');

    const truncated = await rawGateway(e.subarray(0, 20));
    expect(truncated.status).toBe(400);
    const flipped = e.slice();
    flipped[flipped.length - 1]! ^= 1;
    expect(await (await rawGateway(flipped)).json()).toMatchObject({ title: 'bad_ohttp' });

    expect((await rawGateway(e)).status).toBe(200);
    // Refusals after decryption are encrypted responses (RFC 9458 §5.2): the outer answer is a 200.
    const inner = async (r: Response, ctx: Awaited<ReturnType<typeof encapsulated>>['context']) => {
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe('message/ohttp-res');
      return decodeResponse(await decapsulateResponse(ctx, new Uint8Array(await r.arrayBuffer())));
    };
    const first = await encapsulated();
    await inner(await rawGateway(first.encapsulated), first.context);
    const replay = await inner(await rawGateway(first.encapsulated), first.context);
    expect(replay.status).toBe(400);
    expect(JSON.parse(new TextDecoder().decode(replay.content))).toMatchObject({ title: 'replay' });

    const undatedReq = await encapsulated({ date: null });
    const undated = await inner(await rawGateway(undatedReq.encapsulated), undatedReq.context);
    expect(JSON.parse(new TextDecoder().decode(undated.content))).toMatchObject({
      type: 'https://iana.org/assignments/http-problem-types#date',
      title: 'date_required',
    });
    const staleReq = await encapsulated({ date: new Date(Date.now() - 3_600_000).toUTCString() });
    const stale = await inner(await rawGateway(staleReq.encapsulated), staleReq.context);
    expect(stale.status).toBe(400);
    expect(JSON.parse(new TextDecoder().decode(stale.content))).toMatchObject({
      type: 'https://iana.org/assignments/http-problem-types#date',
      title: 'date_out_of_window',
    });
    // The gateway's Date, inside the encryption, so that a relay cannot forge it (§6.5.2).
    expect(stale.headers.find(([n]) => n === 'date')?.[1]).toBeTruthy();

    const wrongType = await fetch(`${h.server.url}${GATEWAY}`, { method: 'POST', body: 'x' });
    expect(wrongType.status).toBe(415);

    const { openai } = client();
    const ok = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'still' }],
    });
    expect(ok.choices[0]!.message.content).toBe(' still done');
  });

  it('inner errors come back encrypted in the OpenAI shape: unknown model, too long, bad JSON, bad fields', async () => {
    const { openai, f } = client();
    // The client refuses to name a model the attestation does not list; the server refuses it too.
    await expect(
      openai.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toMatchObject({ status: 403, code: 'model', type: REFUSAL_TYPE });
    const { encapsulated: e, context } = await encapsulated({
      body: { model: 'nope', messages: [{ role: 'user', content: 'x' }] },
    });
    const inner = decodeResponse(
      await decapsulateResponse(context, new Uint8Array(await (await rawGateway(e)).arrayBuffer())),
    );
    expect(inner.status).toBe(404);
    expect(JSON.parse(new TextDecoder().decode(inner.content)).error.code).toBe('model_not_found');
    const long = Array.from({ length: 100 }, () => 'w').join(' ');
    await expect(
      openai.chat.completions.create({ model: 'tiny-llama', messages: [{ role: 'user', content: long }] }),
    ).rejects.toMatchObject({
      status: 400,
      code: 'prompt_too_long',
    });
    await expect(
      openai.chat.completions.create({
        model: 'tiny-llama',
        messages: [{ role: 'user', content: long }],
        stream: true,
      }),
    ).rejects.toMatchObject({ status: 400, code: 'prompt_too_long' });
    await expect(openai.embeddings.create({ model: 'tiny-llama', input: 'x' })).rejects.toMatchObject({
      status: 400,
      code: 'wrong_model_kind',
    });
    await expect(
      openai.chat.completions.create({
        model: 'tiny-llama',
        messages: [{ role: 'user', content: 'x' }],
        temperature: 5,
      }),
    ).rejects.toMatchObject({ status: 400, param: 'temperature' });
    const badJson = await f(`${h.server.url}/v1/chat/completions`, { method: 'POST', body: '{' });
    expect(badJson.status).toBe(400);
    expect((await badJson.json()).error.code).toBe('invalid_json');
  });

  it('an oversized body is refused with 413', async () => {
    const small = await startHarness({ maxBodyBytes: 1024 });
    try {
      const f = confidentialFetch({
        url: small.server.url,
        policy: SAMPLE_POLICY,
        collateral: NO_COLLATERAL,
      });
      const res = await f(`${small.server.url}/v1/completions`, {
        method: 'POST',
        body: JSON.stringify({ model: 'tiny-llama', prompt: 'x'.repeat(4096) }),
      });
      expect(res.status).toBe(413);
    } finally {
      await small.server.close();
    }
  });

  it('plaintext requests are refused unless the operator allowed them, and the identity says which', async () => {
    const res = await fetch(`${h.server.url}/v1/models`);
    expect(res.status).toBe(403);
    expect((await res.json()).error.code).toBe('plaintext_disabled');
    expect(h.server.attestation.identity.plaintextAllowed).toBe(false);
    const open = await startHarness({ allowPlaintext: true });
    try {
      const plain = await fetch(`${open.server.url}/v1/chat/completions`, {
        method: 'POST',
        body: JSON.stringify({ model: 'tiny-llama', messages: [{ role: 'user', content: 'p' }] }),
      });
      expect((await plain.json()).choices[0].message.content).toBe(' p done');
      expect(open.server.attestation.identity.plaintextAllowed).toBe(true);
      const server = await confidentialFetch({
        url: open.server.url,
        policy: SAMPLE_POLICY,
        collateral: NO_COLLATERAL,
      }).server();
      expect(server.warnings.join(' ')).toContain('plaintext');
    } finally {
      await open.server.close();
    }
  });

  it('a full queue answers 429 and the queued requests still complete', async () => {
    const busy = await startHarness({ text: new ScriptedTextEngine(1, 30), maxQueued: 1 });
    try {
      const body = JSON.stringify({ model: 'tiny-llama', prompt: 'a b c' });
      const responses = await Promise.all(
        [0, 1, 2].map(() =>
          fetch(`${busy.server.url}/v1/completions`, { method: 'POST', body }).catch((e) => e),
        ),
      );
      expect(responses.every((r) => r instanceof Response && r.status === 403)).toBe(true);
      const f = confidentialFetch({ url: busy.server.url, policy: SAMPLE_POLICY, collateral: NO_COLLATERAL });
      await f.server();
      const statuses = await Promise.all(
        [0, 1, 2].map(
          async () => (await f(`${busy.server.url}/v1/completions`, { method: 'POST', body })).status,
        ),
      );
      expect(statuses.sort()).toEqual([200, 200, 429]);
      expect(busy.text.maxRunning).toBe(1);
    } finally {
      await busy.server.close();
    }
  });
});

describe('routes outside the API', () => {
  it('answers CORS preflights, refuses other gateway methods, and unknown routes, in the OpenAI shape', async () => {
    const pre = await fetch(`${h.server.url}${GATEWAY}`, { method: 'OPTIONS' });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('*');
    expect(pre.headers.get('access-control-allow-headers')).toContain('incremental');
    // Only the attestation and the gateway are open to other sites' pages: the plaintext API, the
    // health probe and unknown paths carry no CORS header, and a preflight to them fails.
    const evil = { origin: 'https://evil.example', 'access-control-request-method': 'POST' };
    const prePlain = await fetch(`${h.server.url}/v1/chat/completions`, { method: 'OPTIONS', headers: evil });
    expect(prePlain.status).toBe(404);
    expect(prePlain.headers.get('access-control-allow-origin')).toBeNull();
    for (const path of ['/v1/models', '/healthz', '/nope'])
      expect(
        (await fetch(`${h.server.url}${path}`, { headers: evil })).headers.get('access-control-allow-origin'),
        path,
      ).toBeNull();
    expect(
      (await fetch(`${h.server.url}/v1/attestation`, { headers: evil })).headers.get(
        'access-control-allow-origin',
      ),
    ).toBe('*');

    const put = await fetch(`${h.server.url}${GATEWAY}`, { method: 'PUT', body: 'x' });
    expect(put.status).toBe(405);
    expect((await put.json()).error).toMatchObject({
      code: 'method_not_allowed',
      type: 'invalid_request_error',
    });

    const nope = await fetch(`${h.server.url}/nope?x=1`);
    expect(nope.status).toBe(404);
    expect((await nope.json()).error).toMatchObject({ code: 'not_found', message: 'no route GET /nope' });
    // A path that is not valid percent-encoding is refused in the same shape, not the framework's own.
    const badPath = await fetch(`${h.server.url}/v1/models/%zz`);
    expect(badPath.status).toBeGreaterThanOrEqual(400);
    expect(badPath.status).toBeLessThan(500);
    expect((await badPath.json()).error).toMatchObject({ type: 'invalid_request_error' });

    const keys = await fetch(`${h.server.url}${GATEWAY}`);
    expect(keys.headers.get('content-type')).toBe('application/ohttp-keys');
    expect(new Uint8Array(await keys.arrayBuffer())).toEqual(
      fromBase64(h.server.attestation.identity.ohttpKeys),
    );
    const health = await fetch(`${h.server.url}/healthz`);
    expect(await health.json()).toMatchObject({
      status: 'ok',
      models: [{ id: 'tiny-llama', queued: 0 }, {}],
    });
  });

  it('a fresh attestation needs a nonce in hex', async () => {
    const bad = await fetch(`${h.server.url}/v1/attestation?nonce=xyz`);
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toMatchObject({ code: 'bad_nonce', param: 'nonce' });
    const fresh = await fetch(`${h.server.url}/v1/attestation?nonce=0a0b`);
    expect(fresh.headers.get('content-type')).toBe('application/json');
    expect(fresh.headers.get('cache-control')).toBe('no-store');
    expect((await fresh.json()).identity.nonce).toBe('0a0b');
  });
});

describe('the collateral relay for the browser page', () => {
  it('exists only with --ui, reaches only the vendor hosts, and passes bodies and issuer-chain headers through', async () => {
    expect(
      (await fetch(`${h.server.url}/v1/collateral?url=${encodeURIComponent('https://kdsintf.amd.com/x')}`))
        .status,
    ).toBe(403); // without --ui it is just another plaintext /v1 request, refused
    const asked: string[] = [];
    const vendor = (async (u: URL, init?: RequestInit) => {
      // Redirects are refused, not followed: the allow-list holds only for the first URL.
      expect(init?.redirect).toBe('error');
      asked.push(String(u));
      return new Response('crl-bytes', { headers: { 'tcb-info-issuer-chain': 'pem', 'set-cookie': 'x=1' } });
    }) as unknown as typeof fetch;
    const withUi = await startHarness({
      ui: new Map([['/', { type: 'text/html', body: new Uint8Array() }]]),
      collateralFetch: vendor,
    });
    try {
      const relay = (u: string) => fetch(`${withUi.server.url}/v1/collateral?url=${encodeURIComponent(u)}`);
      const ok = await relay('https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00');
      expect(await ok.text()).toBe('crl-bytes');
      expect(ok.headers.get('tcb-info-issuer-chain')).toBe('pem');
      expect(ok.headers.get('set-cookie')).toBeNull();
      for (const bad of [
        'https://evil.example/x',
        'http://kdsintf.amd.com/x',
        'not a url',
        'https://kdsintf.amd.com.evil.example/',
      ]) {
        const r = await relay(bad);
        expect(r.status, bad).toBe(400);
        expect((await r.json()).error.code).toBe('bad_url');
      }
      expect(asked).toEqual(['https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00']);
    } finally {
      await withUi.server.close();
    }
  });
});

describe('through an OHTTP relay', () => {
  it('the client posts to the relay, which sees only the encapsulated bytes and forwards them', async () => {
    const { createServer } = await import('node:http');
    const seen: Buffer[] = [];
    const relay = createServer(async (req, res) => {
      const parts: Buffer[] = [];
      for await (const c of req) parts.push(c as Buffer);
      const body = Buffer.concat(parts);
      seen.push(body);
      const upstream = await fetch(`${h.server.url}${GATEWAY}`, {
        method: 'POST',
        headers: { 'content-type': req.headers['content-type'] ?? '' },
        body,
      });
      res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? '' });
      res.end(Buffer.from(await upstream.arrayBuffer()));
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const port = (relay.address() as { port: number }).port;
    try {
      const { openai } = client({ relay: `http://127.0.0.1:${port}/relay` });
      const r = await openai.chat.completions.create({
        model: 'tiny-llama',
        messages: [{ role: 'user', content: 'relayed-secret' }],
      });
      expect(r.choices[0]!.message.content).toBe(' relayed-secret done');
      expect(seen).toHaveLength(1);
      expect(seen[0]!.toString('latin1')).not.toContain('relayed-secret');
    } finally {
      relay.close();
    }
  });
});

describe('streamed events are padded so that chunk sizes do not give token lengths away', () => {
  it('every event is a multiple of 64 bytes by default, unpadded with 0, and clients read both', async () => {
    expect(new TextDecoder().decode(sseEvent('x', 0))).toBe('data: x\n\n');
    for (const data of ['', 'x', 'a'.repeat(55), 'a'.repeat(56), 'a'.repeat(57), 'é'.repeat(40)]) {
      const e = sseEvent(data, 64);
      expect(e.length % 64, data).toBe(0);
      expect(new TextDecoder().decode(e)).toMatch(/^data: .*\n:[ ]*\n\n$/s);
    }
    for (const [pad, check] of [
      [undefined, (e: string) => new TextEncoder().encode(e).length % 64 === 0],
      [0, (e: string) => !e.includes('\n:')],
    ] as const) {
      const s = await startHarness({
        allowPlaintext: true,
        ...(pad !== undefined ? { padStreamTo: pad } : {}),
      });
      try {
        const res = await fetch(`${s.server.url}/v1/completions`, {
          method: 'POST',
          body: JSON.stringify({ model: 'tiny-llama', prompt: 'one two three four', stream: true }),
        });
        const text = await res.text();
        const events = text
          .split('\n\n')
          .filter(Boolean)
          .map((e) => `${e}\n\n`);
        expect(events.length).toBeGreaterThan(4);
        expect(events.filter((e) => !check(e))).toEqual([]);
        const { openai } = client({}, s);
        const stream = await openai.completions.create({
          model: 'tiny-llama',
          prompt: 'five six',
          stream: true,
        });
        let out = '';
        for await (const c of stream) out += c.choices[0]?.text ?? '';
        expect(out).toBe(' five six done');
      } finally {
        await s.server.close();
      }
    }
  });
});

describe('chunked OHTTP (draft-ietf-ohai-chunked-ohttp) over HTTP', () => {
  /** What a draft client (such as ohttp-ts's ChunkedOHTTPClient) sends: a stream of sealed chunks. */
  async function chunkedPost(body: unknown, gap = 0) {
    const [config] = decodeKeyConfigList(fromBase64(h.server.attestation.identity.ohttpKeys));
    const inner = encodeRequest({
      method: 'POST',
      path: '/v1/chat/completions',
      authority: 'x',
      headers: [
        ['content-type', 'application/json'],
        ['date', new Date().toUTCString()],
      ],
      content: new TextEncoder().encode(JSON.stringify(body)),
    });
    const sealer = await ChunkedRequestSealer.create(config!);
    const parts = [sealer.header];
    for (let at = 0; at < inner.length; at += 16) {
      parts.push(await sealer.seal(inner.subarray(at, at + 16), at + 16 >= inner.length));
    }
    const stream = new ReadableStream<Uint8Array>({
      async pull(c) {
        const next = parts.shift();
        if (!next) return c.close();
        if (gap) await new Promise((r) => setTimeout(r, gap));
        c.enqueue(next);
      },
    });
    const res = await fetch(`${h.server.url}${GATEWAY}`, {
      method: 'POST',
      headers: { 'content-type': 'message/ohttp-chunked-req', incremental: '?1' },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    return { res, context: sealer.context };
  }

  async function readChunked(res: Response, context: Parameters<typeof decapsulateResponse>[0]) {
    const opener = new ChunkedResponseOpener(context);
    const decoder = new StreamedResponseDecoder();
    const events = [];
    for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>)
      for (const p of await opener.push(piece)) events.push(...decoder.push(p));
    events.push(...decoder.push(await opener.end()), ...decoder.end());
    return events;
  }

  it('a streamed chunked request gets a chunked, incremental response', async () => {
    const { res, context } = await chunkedPost(
      { model: 'tiny-llama', messages: [{ role: 'user', content: 'chunked in' }], stream: true },
      5,
    );
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('message/ohttp-chunked-res');
    expect(res.headers.get('incremental')).toBe('?1');
    const events = await readChunked(res, context);
    expect(events[0]).toMatchObject({ type: 'head', status: 200 });
    const text = events.flatMap((e) => (e.type === 'content' ? [new TextDecoder().decode(e.bytes)] : []));
    expect(text.join('')).toContain('chunked');
  });

  it('a non-streamed chunked request is answered chunked too, and a truncated one is refused', async () => {
    const { res, context } = await chunkedPost({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'whole answer' }],
    });
    expect(res.headers.get('content-type')).toBe('message/ohttp-chunked-res');
    const events = await readChunked(res, context);
    const body = events.flatMap((e) => (e.type === 'content' ? [new TextDecoder().decode(e.bytes)] : []));
    expect(JSON.parse(body.join('')).choices[0].message.content).toBe(' whole answer done');

    const [config] = decodeKeyConfigList(fromBase64(h.server.attestation.identity.ohttpKeys));
    const sealer = await ChunkedRequestSealer.create(config!);
    const cut = await fetch(`${h.server.url}${GATEWAY}`, {
      method: 'POST',
      headers: { 'content-type': 'message/ohttp-chunked-req' },
      body: concatBytes(sealer.header, await sealer.seal(Uint8Array.of(1, 2, 3))).slice(),
    });
    expect(cut.status).toBe(400);
    expect(await cut.json()).toMatchObject({ title: 'bad_ohttp' });
  });

  it('the SDK sends a chunked request only to ask for a stream; plain requests get whole responses', async () => {
    const sent: string[] = [];
    const received: string[] = [];
    const transport = (async (input: RequestInfo | URL, init?: RequestInit) => {
      const res = await fetch(input, init);
      if (init?.method === 'POST') {
        sent.push(new Headers(init.headers).get('content-type') ?? '');
        received.push(res.headers.get('content-type') ?? '');
      }
      return res;
    }) as typeof fetch;
    const { openai } = client({ fetch: transport });
    await openai.chat.completions.create({ model: 'tiny-llama', messages: [{ role: 'user', content: 'a' }] });
    const stream = await openai.chat.completions.create({
      model: 'tiny-llama',
      messages: [{ role: 'user', content: 'b c' }],
      stream: true,
    });
    const deltas: string[] = [];
    for await (const c of stream) if (c.choices[0]?.delta.content) deltas.push(c.choices[0].delta.content);
    expect(deltas.join('')).toBe(' b c done');
    expect(sent).toEqual(['message/ohttp-req', 'message/ohttp-chunked-req']);
    expect(received).toEqual(['message/ohttp-res', 'message/ohttp-chunked-res']);
  });

  it('a plain RFC 9458 client asking for stream: true gets one message/ohttp-res it can open', async () => {
    const { encapsulated: e, context } = await encapsulated({
      body: { model: 'tiny-llama', messages: [{ role: 'user', content: 'plain stream' }], stream: true },
    });
    const res = await rawGateway(e);
    expect(res.headers.get('content-type')).toBe('message/ohttp-res');
    expect(res.headers.get('incremental')).toBeNull();
    const inner = decodeResponse(await decapsulateResponse(context, new Uint8Array(await res.arrayBuffer())));
    expect(inner.status).toBe(200);
    const sse = new TextDecoder().decode(inner.content);
    expect(sse).toContain('data: [DONE]');
    expect(sse).toContain(' plain');
  });
});

describe('restarts', () => {
  it('keys made in the TEE die with the process: a request captured before a restart is refused after', async () => {
    const before = await startHarness();
    const [config] = decodeKeyConfigList(fromBase64(before.server.attestation.identity.ohttpKeys));
    const captured = await encapsulateRequest(
      config!,
      encodeRequest({ method: 'GET', path: '/v1/models', headers: [['date', new Date().toUTCString()]] }),
    );
    const post = (url: string) =>
      fetch(`${url}${GATEWAY}`, {
        method: 'POST',
        headers: { 'content-type': 'message/ohttp-req' },
        body: captured.encapsulated.slice(),
      });
    expect((await post(before.server.url)).status).toBe(200);
    await before.server.close();
    const after = await startHarness(); // the same server started again: new keys, an empty replay cache
    try {
      const replayed = await post(after.server.url);
      expect(replayed.status).toBe(422);
      expect((await replayed.json()).type).toBe('https://iana.org/assignments/http-problem-types#ohttp-key');
    } finally {
      await after.server.close();
    }
  });
});

describe('slow clients', () => {
  /** Opens a raw connection that sends headers promising a body, then trickles it (slow loris). */
  function slowLoris(url: string, everyMs: number) {
    const u = new URL(url);
    const socket = connect(Number(u.port), u.hostname);
    let closedAt = 0;
    let answer = '';
    const started = Date.now();
    socket.on('data', (d) => {
      answer += d.toString('latin1');
    });
    socket.on('close', () => {
      closedAt = Date.now();
    });
    socket.on('error', () => {});
    socket.write(
      `POST ${GATEWAY} HTTP/1.1\r\nHost: x\r\ncontent-type: message/ohttp-req\r\ncontent-length: 100000\r\n\r\n`,
    );
    const timer = setInterval(() => {
      if (!socket.destroyed) socket.write('x');
    }, everyMs);
    return {
      closed: () => (closedAt ? closedAt - started : 0),
      answer: () => answer,
      stop: () => {
        clearInterval(timer);
        socket.destroy();
      },
    };
  }

  it('a body trickled in is cut at the request timeout; /healthz and a long stream are not', async () => {
    const s = await startHarness({
      timeouts: { requestMs: 1500 },
      text: new ScriptedTextEngine(2, 250),
      maxQueued: 0,
    });
    const lorises = Array.from({ length: 5 }, () => slowLoris(s.server.url, 100));
    try {
      // A generation that streams for longer than the request timeout (the upload is what is timed).
      const { openai } = client({}, s);
      const started = Date.now();
      const stream = await openai.chat.completions.create({
        model: 'tiny-llama',
        messages: [{ role: 'user', content: 'a b c d e f g h i j' }],
        stream: true,
      });
      const deltas: string[] = [];
      for await (const c of stream) if (c.choices[0]?.delta.content) deltas.push(c.choices[0].delta.content);
      expect(Date.now() - started).toBeGreaterThan(1500);
      expect(deltas.join('')).toBe(' a b c d e f g h i j done');

      // Liveness is not throttled, however busy the server is.
      const health = await fetch(`${s.server.url}/healthz`);
      expect(health.status).toBe(200);

      await expect
        .poll(() => lorises.every((l) => l.closed() > 0), { timeout: 15_000, interval: 100 })
        .toBe(true);
      for (const l of lorises) {
        expect(l.closed()).toBeGreaterThanOrEqual(1400);
        expect(l.answer()).toMatch(/^HTTP\/1\.1 408/);
      }
    } finally {
      for (const l of lorises) l.stop();
      await s.server.close();
    }
  }, 30_000);

  it("/healthz answers while a model's queue is full", async () => {
    const busy = await startHarness({ text: new ScriptedTextEngine(1, 200), maxQueued: 0 });
    try {
      const { openai } = client({}, busy);
      const running = openai.chat.completions.create({
        model: 'tiny-llama',
        messages: [{ role: 'user', content: 'x y z' }],
      });
      await expect.poll(() => busy.text.running, { timeout: 5000 }).toBe(1);
      await expect(
        openai.chat.completions.create({ model: 'tiny-llama', messages: [{ role: 'user', content: 'q' }] }),
      ).rejects.toMatchObject({ status: 429 });
      const health = await fetch(`${busy.server.url}/healthz`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({ status: 'ok' });
      await running;
    } finally {
      await busy.server.close();
    }
  }, 20_000);
});
