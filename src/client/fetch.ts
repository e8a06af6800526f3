/**
 * `confidentialFetch`: a `fetch` that verifies the server once (verify.ts), then sends every request
 * Oblivious-HTTP-encapsulated to the attested key and opens the encrypted (possibly chunked) response,
 * so unmodified clients such as the official `openai` package talk end to end to the TEE:
 *
 *   new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', fetch: confidentialFetch({ url, policy, collateral }) })
 *
 * The request's path, headers and body travel inside the encapsulation; whoever carries the outer
 * request (a relay, a load balancer, the cloud) sees only its size and timing. A request that asks for
 * a streamed answer (`"stream": true`) goes as a chunked OHTTP request (draft-ietf-ohai-chunked-ohttp),
 * which is how a client asks for a chunked response; any other as a plain RFC 9458 request, answered
 * whole. Web-standard.
 *
 * A refusal (a VerificationError: the server fails the policy, the model is not attested, the answer
 * is not sealed to the request…) is answered, by default, as a synthetic 403 in OpenAI's error shape
 * (`refusalResponse`), not thrown: a client library that takes a `fetch` treats a thrown error as a
 * network failure (the openai package says `Connection error.` and retries it), but reads a 4xx as
 * the refusal it is, with our reason and code. `refusals: 'throw'` rejects with the VerificationError.
 */

import {
  ChunkedRequestSealer,
  ChunkedResponseOpener,
  decapsulateResponse,
  decodeResponse,
  type ExchangeContext,
  encapsulateRequest,
  encodeRequest,
  type Field,
  OHTTP_KEY_PROBLEM,
  type OhttpBackend,
  StreamedResponseDecoder,
  type StreamedResponseEvent,
} from '../ohttp/index.js';
import { concatBytes, toHex } from '../util/index.js';
import type { AttestationDocument } from '../wire/index.js';
import { RECEIPT_HEADER, type ResponseReceipt, verifyResponseReceipt } from '../wire/index.js';
import {
  allowedModel,
  VerificationError,
  type VerifiedServer,
  type VerifyServerOptions,
  verifyServer,
} from './verify.js';

export interface ConfidentialFetchOptions extends Omit<VerifyServerOptions, 'nonce'> {
  /** The server's base URL (where /v1/attestation is). */
  url: string;
  /** Send encapsulated requests to this OHTTP relay instead of straight to the server's gateway. */
  relay?: string;
  /** Ask for a signed receipt with every response and hand each verified one here. */
  onReceipt?: (receipt: ResponseReceipt, jws: string) => void;
  /** Called once the server has been verified (and again after a key change). */
  onVerified?: (server: VerifiedServer) => void;
  /** The transport for the outer requests; default globalThis.fetch. */
  fetch?: typeof fetch;
  /**
   * How a refusal reaches the caller: `response` (default) answers it as a 403 whose body is
   * `{"error":{"message","type":"verification_refused","code"}}` and whose `x-should-retry` is false,
   * which the openai package throws as PermissionDeniedError (`.code` the refusal code) without
   * retrying; `throw` rejects with the VerificationError, for callers that catch it.
   */
  refusals?: 'response' | 'throw';
  /**
   * The OHTTP crypto; default Web Crypto (browsers). Node callers pass nodeBackend from
   * src/ohttp/node.ts, much faster; this module does not import it, so it stays bundleable for browsers.
   */
  ohttp?: OhttpBackend;
}

export type ConfidentialFetch = typeof fetch & {
  /** The verified server (verifying it first if needed). */
  server(): Promise<VerifiedServer>;
};

/** What is sent of a caller's request. */
interface Outgoing {
  url: URL;
  method: string;
  headers: Headers;
  signal?: AbortSignal | null;
}

/** Methods fetch upper-cases (Fetch standard, "normalize a method"). */
const NORMALIZED_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT']);

/**
 * The caller's request. The common call — a URL and a string or byte body, as the openai package makes
 * — is read directly, as `new Request` would read it: building and draining a Request costs a quarter of
 * a millisecond per call, most of what the client adds to a request's latency. Anything else goes
 * through Request.
 */
async function outgoing(
  input: RequestInfo | URL,
  init: RequestInit | undefined,
): Promise<{ request: Outgoing; body: Uint8Array }> {
  const b = init?.body;
  const given = init?.method ?? 'GET';
  const url =
    input instanceof URL || (typeof input === 'string' && URL.canParse(input)) ? new URL(input) : undefined;
  // Everything else — a relative URL (resolved against the page in a browser), credentials in the URL,
  // an unusual method (Request refuses CONNECT, TRACE, bad tokens), another body or signal type — goes
  // through Request, so that it is refused or read exactly as fetch would.
  if (
    url &&
    !url.username &&
    !url.password &&
    /^[A-Za-z]+$/.test(given) &&
    NORMALIZED_METHODS.has(given.toUpperCase()) &&
    (init?.signal == null || init.signal instanceof AbortSignal) &&
    (b == null || typeof b === 'string' || b instanceof Uint8Array)
  ) {
    const method = given.toUpperCase();
    if (b != null && (method === 'GET' || method === 'HEAD'))
      throw new TypeError(`a ${method} request cannot have a body`);
    const headers = new Headers(init?.headers);
    if (typeof b === 'string' && !headers.has('content-type'))
      headers.set('content-type', 'text/plain;charset=UTF-8');
    const body =
      // new Uint8Array(view) copies (a Buffer's slice would not): the caller may reuse its buffer.
      b == null ? new Uint8Array(0) : typeof b === 'string' ? new TextEncoder().encode(b) : new Uint8Array(b);
    return { request: { url, method, headers, signal: init?.signal ?? null }, body };
  }
  const request = new Request(input, init);
  return {
    request: {
      url: new URL(request.url),
      method: request.method,
      headers: request.headers,
      signal: request.signal,
    },
    body: new Uint8Array(await request.arrayBuffer()),
  };
}

const DROP = new Set(['content-length', 'connection', 'host', 'transfer-encoding', 'keep-alive']);
/** The draft's chunk size every receiver must take: larger chunks are sent only where supported. */
const REQUEST_CHUNK = 16_384;

/**
 * RFC 9458 §5.3: the gateway does not know the key the request was made for (a restart made a new
 * one). Cloister's gateway answers 422; the RFC's example and other gateways use 400.
 */
async function isKeyProblem(outer: Response): Promise<boolean> {
  if (outer.status !== 400 && outer.status !== 422) return false;
  if (!(outer.headers.get('content-type') ?? '').includes('problem+json')) return false;
  try {
    return ((await outer.clone().json()) as { type?: unknown }).type === OHTTP_KEY_PROBLEM;
  } catch {
    return false;
  }
}
const NULL_BODY = new Set([101, 204, 205, 304]);

function fields(h: Headers): Field[] {
  const out: Field[] = [];
  h.forEach((v, k) => {
    if (!DROP.has(k)) out.push([k, v]);
  });
  return out;
}

function toHeaders(f: Field[]): Headers {
  const h = new Headers();
  for (const [n, v] of f) {
    try {
      h.append(n, v);
    } catch {
      // A field a Headers object cannot hold (e.g. a pseudo-header) is not one a fetch caller can use.
    }
  }
  return h;
}

/**
 * The OpenAI error `type` of a refusal answered as a response. A relay or anything else on the path can
 * send a 403 with the same body in the clear, so a program that acts on a refusal (alerts, falls back)
 * asks `isRefusal(response)`, which no answer from the network can satisfy.
 */
export const REFUSAL_TYPE = 'verification_refused';

/** The responses this client made for its own refusals: only these are refusals. */
const refusals = new WeakSet<Response>();

/** True only for a response `confidentialFetch` made for its own refusal, never for one it received. */
export function isRefusal(res: Response): boolean {
  return refusals.has(res);
}

/**
 * A refusal as an HTTP answer in OpenAI's error shape: 403 (a client error no client retries, and what
 * the openai package turns into PermissionDeniedError), the reason on one line as the message, the
 * refusal code as `code`. It is made here, in the client: nothing of it came from the server.
 */
function refusalResponse(e: VerificationError): Response {
  const error = {
    message: e.message.replace(/\s*\n\s*/g, ' '),
    type: REFUSAL_TYPE,
    code: e.code,
    param: null,
  };
  const res = Response.json({ error }, { status: 403, headers: { 'x-should-retry': 'false' } });
  refusals.add(res);
  return res;
}

export function confidentialFetch(o: ConfidentialFetchOptions): ConfidentialFetch {
  const transport = o.fetch ?? globalThis.fetch.bind(globalThis);
  const base = new URL(o.url.endsWith('/') ? o.url : `${o.url}/`);
  const gatewayUrl = o.relay ?? new URL('.well-known/ohttp-gateway', base).toString();
  let verified: Promise<VerifiedServer> | undefined;

  async function verify(): Promise<VerifiedServer> {
    const nonce = o.policy.fresh ? toHex(crypto.getRandomValues(new Uint8Array(32))) : undefined;
    const url = new URL('v1/attestation', base);
    if (nonce) url.searchParams.set('nonce', nonce);
    const res = await transport(url, { headers: { accept: 'application/json' } });
    if (!res.ok) throw new VerificationError('bad-document', `GET ${url.pathname} answered ${res.status}`);
    let doc: AttestationDocument;
    try {
      doc = (await res.json()) as AttestationDocument;
    } catch {
      throw new VerificationError('bad-document', 'the attestation document is not JSON');
    }
    const server = await verifyServer(doc, { ...o, ...(nonce ? { nonce } : {}) });
    o.onVerified?.(server);
    return server;
  }

  function server(): Promise<VerifiedServer> {
    verified ??= verify().catch((e: unknown) => {
      verified = undefined;
      throw e;
    });
    return verified;
  }

  /** Outer refusals that say the gateway no longer has the key (RFC 9458 §5.3). */
  const keyChanged = new WeakSet<Response>();

  /** Encapsulates a request and opens its answer. */
  async function send(
    server: VerifiedServer,
    request: Outgoing,
    body: Uint8Array,
    streamed: boolean,
  ): Promise<Response> {
    const url = request.url;
    const headers = fields(request.headers);
    headers.push(['date', new Date().toUTCString()]);
    if (o.onReceipt) headers.push([RECEIPT_HEADER, 'request']);
    const inner = encodeRequest({
      method: request.method,
      scheme: url.protocol.replace(':', ''),
      authority: url.host,
      path: url.pathname + url.search,
      headers,
      content: body,
    });
    const config = server.keyConfigs[0]!;
    const backend = o.ohttp ? { backend: o.ohttp } : {};
    let encapsulated: Uint8Array;
    let context: ExchangeContext;
    let outerHeaders: Record<string, string>;
    if (streamed) {
      // A chunked request asks for a chunked response; the draft wants both marked Incremental.
      const sealer = await ChunkedRequestSealer.create(config, backend);
      const parts = [sealer.header];
      let at = 0;
      for (; inner.length - at > REQUEST_CHUNK; at += REQUEST_CHUNK)
        parts.push(await sealer.seal(inner.subarray(at, at + REQUEST_CHUNK)));
      parts.push(await sealer.seal(inner.subarray(at), true));
      encapsulated = concatBytes(...parts);
      context = sealer.context;
      outerHeaders = { 'content-type': 'message/ohttp-chunked-req', incremental: '?1' };
    } else {
      // The response is opened with the backend recorded in `context`.
      ({ encapsulated, context } = await encapsulateRequest(config, inner, backend));
      outerHeaders = { 'content-type': 'message/ohttp-req' };
    }
    const outer = await transport(gatewayUrl, {
      method: 'POST',
      headers: outerHeaders,
      body: encapsulated.slice(),
      signal: request.signal ?? null,
    });
    const type = (outer.headers.get('content-type') ?? '').split(';')[0]!.trim();
    if (type === 'message/ohttp-res') return openWhole(server, context, inner, outer);
    if (type === 'message/ohttp-chunked-res') return openChunked(server, context, inner, outer);
    // Nothing else is sealed to this request, so anyone on the path (a relay, a proxy) could have
    // written it. Only a refusal in the clear (4xx or 5xx, RFC 9458 §5.2) passes on, as the error it
    // is; a success would reach the caller as if the attested server had said it.
    if (outer.status < 400) {
      await outer.body?.cancel().catch(() => {});
      throw new VerificationError(
        'bad-response',
        `the gateway answered ${outer.status} ${type || 'with no content type'}, not an encapsulated response: an answer not sealed to this request is not passed on`,
      );
    }
    // The gateway refused before decryption (malformed, key change); its answer is not secret.
    if (await isKeyProblem(outer)) keyChanged.add(outer);
    return outer;
  }

  async function checkReceipt(
    server: VerifiedServer,
    jws: string | undefined,
    inner: Uint8Array,
    content: Uint8Array,
  ) {
    if (!o.onReceipt) return;
    if (!jws) throw new VerificationError('receipt', 'the server sent no receipt although one was asked for');
    const receipt = await verifyResponseReceipt(jws, server.document.identity.receiptKey, {
      request: inner,
      response: content,
      identity: server.reportData,
    });
    o.onReceipt(receipt, jws);
  }

  async function openWhole(server: VerifiedServer, ctx: ExchangeContext, inner: Uint8Array, outer: Response) {
    const r = decodeResponse(await decapsulateResponse(ctx, new Uint8Array(await outer.arrayBuffer())));
    await checkReceipt(server, r.headers.find(([n]) => n === RECEIPT_HEADER)?.[1], inner, r.content);
    return new Response(NULL_BODY.has(r.status) ? null : r.content.slice(), {
      status: r.status,
      headers: toHeaders(r.headers),
    });
  }

  async function openChunked(
    server: VerifiedServer,
    ctx: ExchangeContext,
    inner: Uint8Array,
    outer: Response,
  ) {
    if (!outer.body) throw new VerificationError('bad-response', 'the chunked response has no body');
    const reader = outer.body.getReader();
    const opener = new ChunkedResponseOpener(ctx);
    const decoder = new StreamedResponseDecoder();
    const queue: StreamedResponseEvent[] = [];
    let ended = false;
    // Reads until the decoder has produced at least one event (or the stream is over).
    async function fill(): Promise<void> {
      while (queue.length === 0 && !ended) {
        const { done, value } = await reader.read();
        if (done) {
          ended = true;
          const last = await opener.end();
          queue.push(...decoder.push(last), ...decoder.end());
        } else {
          for (const piece of await opener.push(value)) queue.push(...decoder.push(piece));
        }
      }
    }
    await fill();
    const head = queue.shift();
    if (head?.type !== 'head')
      throw new VerificationError('bad-response', 'the chunked response did not start with a response head');
    const content: Uint8Array[] = [];
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        for (;;) {
          await fill();
          const e = queue.shift();
          if (!e) {
            c.close();
            return;
          }
          if (e.type === 'content') {
            // Kept only to check a receipt: a long stream nobody asked a receipt for is not held twice.
            if (o.onReceipt) content.push(e.bytes);
            c.enqueue(e.bytes);
            return;
          }
          if (e.type === 'trailers') {
            await checkReceipt(
              server,
              e.trailers.find(([n]) => n === RECEIPT_HEADER)?.[1],
              inner,
              concatBytes(...content),
            );
          }
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: head.status, headers: toHeaders(head.headers) });
  }

  const f = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    try {
      return await exchange(input, init);
    } catch (e) {
      if (e instanceof VerificationError && o.refusals !== 'throw') return refusalResponse(e);
      throw e;
    }
  };

  async function exchange(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const { request, body } = await outgoing(input, init);
    // Compared as origins: a prefix test would let https://llm.example.evil.com pass for https://llm.example.
    const origin = request.url.origin;
    if (origin !== base.origin) {
      throw new VerificationError(
        'bad-request',
        `confidentialFetch for ${base.origin} refuses to send to ${origin}`,
      );
    }
    const s = await server();
    const streamed = inspect(s, body);
    const res = await send(s, request, body, streamed);
    if (!keyChanged.has(res)) return res;
    // The server's key changed (a restart makes a new one in the TEE): verify again, then retry once.
    verified = undefined;
    const again = await server();
    inspect(again, body);
    return send(again, request, body, streamed);
  }

  /** Checks the model the body names against the server and policy; says whether it asks for a stream. */
  function inspect(s: VerifiedServer, body: Uint8Array): boolean {
    if (body.length === 0) return false;
    let json: { model?: unknown; stream?: unknown } | null;
    try {
      json = JSON.parse(new TextDecoder().decode(body)) as { model?: unknown; stream?: unknown } | null;
    } catch {
      return false;
    }
    if (typeof json?.model === 'string') allowedModel(s, json.model, o.policy);
    return json?.stream === true;
  }

  return Object.assign(f as typeof fetch, { server });
}
