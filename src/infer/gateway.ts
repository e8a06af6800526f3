/**
 * The Oblivious HTTP gateway in front of the OpenAI handler (RFC 9458, chunked responses after
 * draft-ietf-ohai-chunked-ohttp; docs/confidential-inference.md). Web-standard: it takes the
 * encapsulated request's bytes and returns the outer response, so any HTTP server can host it.
 *
 * An encapsulated request is refused before the handler sees it when it does not decrypt, names an
 * unknown key, was seen before (replay cache over its `enc`), or carries a Date further from the
 * gateway's clock than the replay window allows (older requests could otherwise be replayed once the
 * cache has forgotten them). A response whose inner content type is `text/event-stream` goes back as a
 * chunked OHTTP response: one sealed chunk per piece of the stream, the per-response receipt in the
 * Binary HTTP trailers; any other response goes back whole.
 */
import {
  type BhttpRequest,
  ChunkedResponseSealer,
  decapsulateRequest,
  decodeRequest,
  type ExchangeContext,
  encapsulateResponse,
  encodeResponse,
  type Field,
  type GatewayKey,
  type OhttpBackend,
  OhttpError,
  type ReplayGuard,
  streamedResponse,
} from '../ohttp/index.js';
import { concatBytes } from '../util/bytes.js';
import { InferError } from './errors.js';
import type { Handler } from './openai.js';
import {
  MODEL_DIGEST_HEADER,
  RECEIPT_HEADER,
  type ResponseReceipt,
  sha256Label,
  signResponseReceipt,
} from './receipt.js';

export const OHTTP_REQUEST_TYPE = 'message/ohttp-req';
export const OHTTP_RESPONSE_TYPE = 'message/ohttp-res';
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

export interface GatewayResponse {
  contentType: string;
  body: Uint8Array | ReadableStream<Uint8Array>;
}

/** Refusals at the OHTTP layer: RFC 9458 §5.3 says a key mismatch is a 422 with the ohttp-key problem type. */
export class GatewayError extends InferError {
  override name = 'GatewayError';
  get problemType(): string {
    return this.code === 'ohttp_key'
      ? 'https://iana.org/assignments/http-problem-types#ohttp-key'
      : `https://cloister.dev/problems/${this.code}`;
  }
}

function refuse(e: OhttpError): GatewayError {
  switch (e.code) {
    case 'unknown-key-id':
    case 'unsupported-kem':
    case 'unsupported-kdf':
    case 'unsupported-aead':
      return new GatewayError(
        422,
        'ohttp_key',
        `${e.message}; fetch the current key configuration from GET /.well-known/ohttp-gateway`,
      );
    case 'replay':
      return new GatewayError(400, 'replay', e.message);
    case 'replay-cache-full':
      return new GatewayError(503, 'replay_cache_full', e.message);
    case 'replay-store-unavailable':
      return new GatewayError(503, 'replay_store_unavailable', e.message);
    default:
      return new GatewayError(400, 'bad_ohttp', e.message);
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
        400,
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
      400,
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
): (encapsulated: Uint8Array, signal: AbortSignal) => Promise<GatewayResponse> {
  const now = o.now ?? Date.now;

  async function receiptFor(
    wanted: boolean,
    requestBytes: Uint8Array,
    res: Response,
    content: Uint8Array,
  ): Promise<Field[]> {
    if (!wanted) return [];
    const body: ResponseReceipt = {
      type: 'cloister-inference-receipt/v1',
      iat: Math.floor(now() / 1000),
      request: await sha256Label(requestBytes),
      response: await sha256Label(content),
      status: res.status,
      modelDigest: res.headers.get(MODEL_DIGEST_HEADER),
      identity: o.receipts.identity,
    };
    return [[RECEIPT_HEADER, await signResponseReceipt(body, o.receipts.key)]];
  }

  return async (encapsulated, signal) => {
    let requestBytes: Uint8Array;
    let context: ExchangeContext;
    let inner: BhttpRequest;
    try {
      ({ request: requestBytes, context } = await decapsulateRequest(encapsulated, o.keys, {
        ...(o.ohttp ? { backend: o.ohttp } : {}),
      }));
      inner = decodeRequest(requestBytes);
    } catch (e) {
      if (e instanceof OhttpError) throw refuse(e);
      throw e;
    }
    const date = header(inner.headers, 'date');
    const at = date === undefined ? Number.NaN : Date.parse(date);
    if (Number.isNaN(at)) {
      throw new GatewayError(
        400,
        'date_required',
        'the encapsulated request needs a Date header (replay protection)',
      );
    }
    if (Math.abs(now() - at) > o.maxClockSkewMs) {
      throw new GatewayError(
        400,
        'date_out_of_window',
        `the encapsulated request's Date is ${Math.round((now() - at) / 1000)} s from the gateway's clock; at most ${o.maxClockSkewMs / 1000} s is accepted`,
      );
    }
    try {
      await o.replay.check(context.enc, now());
    } catch (e) {
      if (e instanceof OhttpError) throw refuse(e);
      throw e;
    }
    const wantsReceipt = header(inner.headers, RECEIPT_HEADER) !== undefined;
    const res = await o.handler(innerRequest(inner, signal));
    const streamed =
      res.body !== null && (res.headers.get('content-type') ?? '').startsWith('text/event-stream');

    if (!streamed) {
      const content = new Uint8Array(await res.arrayBuffer());
      const headers = [
        ...responseFields(res),
        ...(await receiptFor(wantsReceipt, requestBytes, res, content)),
      ];
      const bytes = encodeResponse({ status: res.status, headers, content });
      return { contentType: OHTTP_RESPONSE_TYPE, body: await encapsulateResponse(context, bytes) };
    }

    const sealer = await ChunkedResponseSealer.create(context);
    const reader = res.body!.getReader();
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
        const { done, value } = await reader.read();
        if (!done) {
          sent.push(value);
          c.enqueue(await sealer.seal(streamedResponse.content(value)));
          return;
        }
        const trailers = await receiptFor(wantsReceipt, requestBytes, res, concatBytes(...sent));
        c.enqueue(await sealer.seal(streamedResponse.end(trailers), true));
        c.close();
      },
      async cancel(reason) {
        await reader.cancel(reason);
      },
    });
    return { contentType: OHTTP_CHUNKED_RESPONSE_TYPE, body };
  };
}
