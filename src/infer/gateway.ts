/**
 * The Oblivious HTTP gateway in front of the OpenAI handler (RFC 9458, and chunked requests and responses
 * after draft-ietf-ohai-chunked-ohttp; docs/confidential-inference.md). Web-standard: it takes the
 * encapsulated request's bytes and returns the outer response, so any HTTP server can host it.
 *
 * What is refused before decryption (malformed, unknown key, does not decrypt) throws a GatewayError for
 * the host to answer in the clear, as RFC 9458 §5.2 says. Everything after decryption is answered inside
 * the encryption (§5.2: such errors MUST be encapsulated): a request whose Date is missing or further from
 * the gateway's clock than the replay window allows (the `date` problem type of §6.5.2, with the
 * gateway's Date), one seen before (replay cache over its `enc`), or one the handler refuses.
 *
 * The response's form follows the request's: a chunked request (`message/ohttp-chunked-req`) gets a
 * chunked response (the draft requires it), one sealed chunk per piece of the handler's stream and the
 * per-response receipt in the Binary HTTP trailers; a plain RFC 9458 request gets one
 * `message/ohttp-res`, a streamed answer being buffered here in the TEE until it is complete.
 */
import {
  type BhttpRequest,
  ChunkedRequestOpener,
  ChunkedResponseSealer,
  DATE_PROBLEM,
  decapsulateRequest,
  decodeRequest,
  type ExchangeContext,
  encapsulateResponse,
  encodeResponse,
  type Field,
  type GatewayKey,
  OHTTP_KEY_PROBLEM,
  type OhttpBackend,
  OhttpError,
  type ReplayGuard,
  streamedResponse,
} from '../ohttp/index.js';
import { concatBytes } from '../util/index.js';
import {
  MODEL_ADAPTERS_HEADER,
  MODEL_DIGEST_HEADER,
  parseAdaptersHeader,
  RECEIPT_HEADER,
  type ResponseReceipt,
  sha256Label,
  signResponseReceipt,
} from '../wire/index.js';
import { InferError } from './errors.js';
import type { Handler } from './openai.js';

export const OHTTP_REQUEST_TYPE = 'message/ohttp-req';
export const OHTTP_RESPONSE_TYPE = 'message/ohttp-res';
export const OHTTP_CHUNKED_REQUEST_TYPE = 'message/ohttp-chunked-req';
export const OHTTP_CHUNKED_RESPONSE_TYPE = 'message/ohttp-chunked-res';

export interface GatewayOptions {
  keys: GatewayKey[];
  replay: ReplayGuard;
  /** Half the replay window: a request's Date must be within this of the gateway's clock. */
  maxClockSkewMs: number;
  handler: Handler;
  receipts: { key: CryptoKey; identity: string };
  now?: () => number;
  /** The OHTTP crypto; default Web Crypto. A Node host passes nodeBackend (src/ohttp/node.ts), much faster. */
  ohttp?: OhttpBackend;
}

/**
 * A plain request (`message/ohttp-req`) whole, or a chunked one (`message/ohttp-chunked-req`), which is
 * opened chunk by chunk as its bytes arrive.
 */
export type GatewayRequest =
  | { chunked: false; body: Uint8Array }
  | { chunked: true; body: Uint8Array | AsyncIterable<Uint8Array> };

export interface GatewayResponse {
  contentType: string;
  body: Uint8Array | ReadableStream<Uint8Array>;
  /** A chunked response, to be sent with `Incremental: ?1` so that relays forward it as it comes. */
  incremental: boolean;
}

/**
 * Refusals at the OHTTP layer, answered as problem details (RFC 9457): in the clear before decryption,
 * inside the encryption after it. A key mismatch uses RFC 9458 §5.3's ohttp-key type (with 422, see
 * the docs), a Date problem §6.5.2's date type.
 */
export class GatewayError extends InferError {
  override name = 'GatewayError';
  get problemType(): string {
    if (this.code === 'ohttp_key') return OHTTP_KEY_PROBLEM;
    if (this.code === 'date_required' || this.code === 'date_out_of_window') return DATE_PROBLEM;
    return `https://cloister.dev/problems/${this.code}`;
  }
}

/** A GatewayError as an RFC 9457 problem response; date problems carry the gateway's Date (§6.5.2). */
function problemResponse(e: GatewayError, now: number): Response {
  const headers: Record<string, string> = {
    'content-type': 'application/problem+json',
    'cache-control': 'no-store',
  };
  if (e.problemType === DATE_PROBLEM) headers.date = new Date(now).toUTCString();
  const body = { type: e.problemType, title: e.code, status: e.status, detail: e.message };
  return new Response(JSON.stringify(body), { status: e.status, headers });
}

function refuse(e: OhttpError): GatewayError {
  switch (e.code) {
    case 'unknown-key-id':
    case 'unsupported-kem':
    case 'unsupported-kdf':
    case 'unsupported-aead':
      return new GatewayError(
        'ohttp_key',
        `${e.message}; fetch the current key configuration from GET /.well-known/ohttp-gateway`,
      );
    case 'replay':
      return new GatewayError('replay', e.message);
    case 'stale-date':
      return new GatewayError('date_out_of_window', e.message);
    case 'replay-cache-full':
      return new GatewayError('replay_cache_full', e.message);
    case 'replay-store-unavailable':
      return new GatewayError('replay_store_unavailable', e.message);
    default:
      return new GatewayError('bad_ohttp', e.message);
  }
}

function header(fields: Field[], name: string): string | undefined {
  return fields.find(([n]) => n.toLowerCase() === name)?.[1];
}

function innerRequest(r: BhttpRequest, signal: AbortSignal): Request {
  const url = `https://${r.authority || 'cloister.internal'}${r.path.startsWith('/') ? r.path : `/${r.path}`}`;
  const headers = new Headers();
  for (const [n, v] of r.headers) {
    try {
      headers.append(n, v);
    } catch {
      throw new GatewayError(
        'bad_inner_request',
        `the encapsulated request's header '${n}' is not a valid HTTP field`,
      );
    }
  }
  const hasBody = r.method !== 'GET' && r.method !== 'HEAD';
  try {
    return new Request(url, {
      method: r.method,
      headers,
      signal,
      ...(hasBody ? { body: r.content.slice() } : {}),
    });
  } catch (e) {
    throw new GatewayError(
      'bad_inner_request',
      `the encapsulated request is not a valid HTTP request: ${(e as Error).message}`,
    );
  }
}

function responseFields(res: Response): Field[] {
  const out: Field[] = [];
  res.headers.forEach((v, n) => {
    if (n !== 'content-length' && n !== 'transfer-encoding' && n !== 'connection') out.push([n, v]);
  });
  return out;
}

export function createGateway(
  o: GatewayOptions,
): (request: GatewayRequest, signal: AbortSignal) => Promise<GatewayResponse> {
  const now = o.now ?? Date.now;

  async function receiptFor(
    wanted: boolean,
    requestBytes: Uint8Array,
    res: Response,
    content: Uint8Array,
  ): Promise<Field[]> {
    if (!wanted) return [];
    const adapters = parseAdaptersHeader(res.headers.get(MODEL_ADAPTERS_HEADER));
    const body: ResponseReceipt = {
      type: 'cloister-inference-receipt/v1',
      iat: Math.floor(now() / 1000),
      request: await sha256Label(requestBytes),
      response: await sha256Label(content),
      status: res.status,
      modelDigest: res.headers.get(MODEL_DIGEST_HEADER),
      ...(adapters ? { adapters } : {}),
      identity: o.receipts.identity,
    };
    return [[RECEIPT_HEADER, await signResponseReceipt(body, o.receipts.key)]];
  }

  /** Opens the request; an OhttpError here is a refusal in the clear (before decryption, §5.2). */
  async function open(req: GatewayRequest): Promise<{ requestBytes: Uint8Array; context: ExchangeContext }> {
    const backend = o.ohttp ? { backend: o.ohttp } : {};
    try {
      if (!req.chunked) {
        const { request, context } = await decapsulateRequest(req.body, o.keys, backend);
        return { requestBytes: request, context };
      }
      const opener = new ChunkedRequestOpener(o.keys, backend);
      const pieces: Uint8Array[] = [];
      for await (const bytes of req.body instanceof Uint8Array ? [req.body] : req.body) {
        pieces.push(...(await opener.push(bytes)));
      }
      pieces.push(await opener.end());
      return { requestBytes: concatBytes(...pieces), context: opener.context! };
    } catch (e) {
      if (e instanceof OhttpError) throw refuse(e);
      throw e;
    }
  }

  /** Everything after decryption: checks, then the handler; a refusal is a response to encapsulate. */
  async function answer(requestBytes: Uint8Array, enc: Uint8Array, signal: AbortSignal) {
    let inner: BhttpRequest;
    try {
      inner = decodeRequest(requestBytes);
    } catch (e) {
      if (!(e instanceof OhttpError)) throw e;
      return { res: refused(new GatewayError('bad_inner_request', e.message)), wantsReceipt: false };
    }
    const wantsReceipt = header(inner.headers, RECEIPT_HEADER) !== undefined;
    try {
      // RFC 9458 §5.1: a 100-continue expectation cannot be met through the encapsulation.
      if (/100-continue/i.test(header(inner.headers, 'expect') ?? '')) {
        throw new GatewayError('expectation_failed', 'Expect: 100-continue cannot be met through OHTTP');
      }
      const at = checkDate(inner);
      try {
        await o.replay.check(enc, at);
      } catch (e) {
        if (e instanceof OhttpError) throw refuse(e);
        throw e;
      }
      return { res: await o.handler(innerRequest(inner, signal)), wantsReceipt };
    } catch (e) {
      if (e instanceof GatewayError) return { res: refused(e), wantsReceipt };
      throw e;
    }
  }

  function refused(e: GatewayError): Response {
    return problemResponse(e, now());
  }

  function checkDate(inner: BhttpRequest): number {
    const date = header(inner.headers, 'date');
    const at = date === undefined ? Number.NaN : Date.parse(date);
    if (Number.isNaN(at)) {
      throw new GatewayError(
        'date_required',
        'the encapsulated request needs a Date header (replay protection)',
      );
    }
    const t = now();
    if (Math.abs(t - at) > o.maxClockSkewMs) {
      throw new GatewayError(
        'date_out_of_window',
        `the encapsulated request's Date is ${Math.round((t - at) / 1000)} s from the gateway's clock; at most ${o.maxClockSkewMs / 1000} s is accepted`,
      );
    }
    return at;
  }

  return async (req, signal) => {
    const { requestBytes, context } = await open(req);
    const { res, wantsReceipt } = await answer(requestBytes, context.enc, signal);

    if (!req.chunked) {
      // A plain RFC 9458 client reads one message/ohttp-res: a streamed answer is gathered here first.
      const content = new Uint8Array(await res.arrayBuffer());
      const headers = [
        ...responseFields(res),
        ...(await receiptFor(wantsReceipt, requestBytes, res, content)),
      ];
      const bytes = encodeResponse({ status: res.status, headers, content });
      return {
        contentType: OHTTP_RESPONSE_TYPE,
        body: await encapsulateResponse(context, bytes),
        incremental: false,
      };
    }

    const sealer = await ChunkedResponseSealer.create(context);
    const reader = res.body?.getReader();
    const sent: Uint8Array[] = [];
    let headSent = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        if (!headSent) {
          headSent = true;
          c.enqueue(
            concatBytes(
              sealer.header,
              await sealer.seal(streamedResponse.head(res.status, responseFields(res))),
            ),
          );
          return;
        }
        const { done, value } = reader ? await reader.read() : { done: true as const, value: undefined };
        if (!done) {
          // An empty piece would be an empty non-final chunk, which the draft forbids.
          if (value.length === 0) return;
          // Kept only to sign a receipt: a long stream nobody asked a receipt for is not held in the TEE.
          if (wantsReceipt) sent.push(value);
          c.enqueue(await sealer.seal(streamedResponse.content(value)));
          return;
        }
        const trailers = await receiptFor(wantsReceipt, requestBytes, res, concatBytes(...sent));
        c.enqueue(await sealer.seal(streamedResponse.end(trailers), true));
        c.close();
      },
      async cancel(reason) {
        await reader?.cancel(reason);
      },
    });
    return { contentType: OHTTP_CHUNKED_RESPONSE_TYPE, body, incremental: true };
  };
}
