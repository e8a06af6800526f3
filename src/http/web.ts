/**
 * Web-standard bodies on the Fastify stack (Node-only): servers whose handlers speak `Request` and
 * `Response` (the inference server's OpenAI handler and OHTTP gateway) or stream bodies through web
 * streams (the agent's /seal and /unseal) take the raw request body as it arrives and answer with a web
 * `Response`, streamed.
 *
 * Streaming is Fastify's own: the status and headers go out with the first bytes of the body, so a
 * body that fails before it yields anything is still answered by the server's error handler, and one
 * that fails later cuts the connection (no final chunk, or no answer at all when the first bytes were
 * not yet flushed), so that a client cannot take a truncated body for a whole one. A client that
 * leaves cancels the body, which stops the work behind it.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { concatBytes } from '../util/index.js';

/**
 * Leaves every request body unread for the handler, whatever its media type: Fastify's own parsers
 * would buffer a chunked OHTTP request or a sealed upload that must be read as it arrives. Body
 * limits are then the handler's (readBody, limitedBody).
 */
export function rawBodies(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));
}

/**
 * The request body as it arrives; `tooLarge` makes the refusal once it passes `limit` bytes (by its
 * Content-Length up front, or by counting).
 */
export async function* limitedBody(
  request: FastifyRequest,
  limit: number,
  tooLarge: () => Error,
): AsyncGenerator<Uint8Array> {
  const declared = Number(request.headers['content-length']);
  if (declared > limit) throw tooLarge();
  let size = 0;
  for await (const chunk of request.raw as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw tooLarge();
    yield new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length);
  }
}

/** The whole request body, refused by `tooLarge` past `limit` bytes. */
export async function readBody(
  request: FastifyRequest,
  limit: number,
  tooLarge: () => Error,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of limitedBody(request, limit, tooLarge)) parts.push(chunk);
  return concatBytes(...parts);
}

/** Aborts once the client leaves before its response was sent in full. */
export function clientGone(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}

/** The request as a web `Request` (for handlers written against fetch's types), with `body` read already. */
export function webRequest(
  request: FastifyRequest,
  body: Uint8Array | undefined,
  signal: AbortSignal,
): Request {
  const headers = new Headers();
  for (const [k, v] of Object.entries(request.headers)) if (typeof v === 'string') headers.set(k, v);
  return new Request(`http://localhost${request.url}`, {
    method: request.method,
    headers,
    signal,
    ...(body ? { body: body.slice() } : {}),
  });
}

/**
 * Sends a web `Response` (status, headers, body streamed as it comes) and `extra` headers. `onCut`
 * hears of a body that failed after its first bytes, which the client sees as a cut connection.
 */
export function sendResponse(
  reply: FastifyReply,
  response: Response,
  extra: Record<string, string> = {},
  onCut?: (error: unknown) => void,
): FastifyReply {
  reply.code(response.status);
  response.headers.forEach((v, k) => {
    reply.header(k, v);
  });
  reply.headers(extra);
  if (!response.body) return reply.send();
  return reply.send(onCut ? watched(response.body, reply, onCut) : response.body);
}

/** Passes `body` through, telling `onCut` of a failure once the response has begun. */
function watched(
  body: ReadableStream<Uint8Array>,
  reply: FastifyReply,
  onCut: (error: unknown) => void,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        try {
          const { done, value } = await reader.read();
          if (done) c.close();
          else c.enqueue(value);
        } catch (e) {
          if (reply.raw.headersSent) onCut(e);
          throw e;
        }
      },
      cancel: (reason) => reader.cancel(reason),
    },
    { highWaterMark: 0 },
  );
}
