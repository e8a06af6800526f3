/**
 * The one HTTP stack every Cloister server stands on (Node-only): Fastify with the settings each of
 * them needs, and the pieces of the error edge they share. Domain code throws errors that carry a
 * `code` from its module's closed union; each server maps codes to statuses in one table at its edge
 * (`statusOf`), so no HTTP status is chosen below this floor.
 *
 * Fastify because the key broker already stood on it and it brings the parts we would otherwise
 * hand-write: body limits, slow-client timeouts, trusted-proxy handling, cookies (@fastify/cookie),
 * rate limits (@fastify/rate-limit) and an OpenAPI document generated from the route schemas
 * (@fastify/swagger).
 */
import type { Server as HttpsServer } from 'node:https';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { problem } from '../wire/index.js';
import { readTlsFiles, type TlsOptions, watchTlsFiles } from './tls.js';

export interface HttpOptions {
  /** Largest accepted request body in bytes. */
  bodyLimit: number;
  /**
   * Slow clients: the whole request must arrive within `requestMs`, its headers within `headersMs`;
   * an idle kept-alive connection closes after `keepAliveMs`. `idleMs` (default: off) also closes a
   * connection on which nothing moved for that long, responses included: for servers whose answers are
   * short (the key broker), so a client that never reads cannot hold a connection; streaming servers
   * leave it off, as a long generation may pause.
   */
  timeouts?: { requestMs?: number; headersMs?: number; keepAliveMs?: number; idleMs?: number };
  /** Proxies (addresses/CIDRs) whose X-Forwarded-For names the client; empty or absent: none. */
  trustProxy?: readonly string[];
  /**
   * Route schemas check requests and never rewrite them: no type coercion ("5" stays a string, a lone
   * value does not become an array), no defaults filled in, no properties removed. Off: Fastify's
   * defaults, which coerce.
   */
  strictSchemas?: boolean;
  /**
   * Serve HTTPS with this certificate and key (PEM files, reloaded when either changes; see tls.ts).
   * Absent: plain HTTP, which a server allows only where `checkListen` does.
   */
  tls?: TlsOptions;
}

export function createHttp(o: HttpOptions): FastifyInstance {
  const t = o.timeouts ?? {};
  const requestMs = t.requestMs ?? 60_000;
  // Read now, so that a missing or mismatched file is refused before anything listens.
  const pair = o.tls ? readTlsFiles(o.tls) : undefined;
  const app = Fastify({
    ...(pair ? { https: pair } : {}),
    bodyLimit: o.bodyLimit,
    // Node times the request (408 and close once it is late); the response only where `idleMs` asks.
    requestTimeout: requestMs,
    connectionTimeout: t.idleMs ?? 0,
    keepAliveTimeout: t.keepAliveMs ?? 5_000,
    // Refusals Fastify makes before routing (a URL that is not valid percent-encoding, say) go to the
    // server's own error handler, so they come out in its error shape like every other refusal.
    frameworkErrors: (err, req, reply) => {
      // The router's context for a URL it cannot parse still holds Fastify's default handler.
      app.errorHandler(err, req, reply);
    },
    logger: false,
    return503OnClosing: true,
    // Only listed proxies may say who the client is; anyone else could pick a fresh bucket per request.
    trustProxy: o.trustProxy && o.trustProxy.length > 0 ? [...o.trustProxy] : false,
    ...(o.strictSchemas
      ? { ajv: { customOptions: { coerceTypes: false, useDefaults: false, removeAdditional: false } } }
      : {}),
    // An HTTPS server is typed apart from an HTTP one; every server here uses only what both have.
  }) as unknown as FastifyInstance;
  if (o.tls) {
    const stop = watchTlsFiles(app.server as unknown as HttpsServer, o.tls);
    app.addHook('onClose', async () => stop());
  }
  if (t.headersMs !== undefined) app.server.headersTimeout = t.headersMs;
  // How often those deadlines are checked (Node's default, 30 s, would let a slow client overstay);
  // read when the server starts listening (a property Node's types leave out).
  (app.server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = Math.max(
    100,
    Math.min(1000, requestMs / 4),
  );
  return app;
}

/** A server's whole code → status table: the compiler refuses one that forgets a code. */
export type StatusTable<Code extends string> = Readonly<Record<Code, number>>;

/** Errors Fastify itself raises before a handler runs (bad JSON, too large, wrong media type). */
export type FrameworkCode = 'malformed-json' | 'body-too-large' | 'unsupported-media-type' | 'bad-request';

export interface FrameworkRefusal {
  status: number;
  code: FrameworkCode;
  detail: string;
}

/**
 * Fastify's own 4xx refusals in our words, or undefined for anything else (a handler's error, or a
 * 5xx that must not leak its message).
 */
export function frameworkRefusal(err: unknown, bodyLimit: number): FrameworkRefusal | undefined {
  const e = err as Partial<FastifyError>;
  const status = e.statusCode;
  if (typeof status !== 'number' || status < 400 || status >= 500) return undefined;
  switch (e.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { status, code: 'malformed-json', detail: String(e.message) };
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status, code: 'body-too-large', detail: `request body exceeds ${bodyLimit} bytes` };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { status, code: 'unsupported-media-type', detail: String(e.message) };
    default:
      return { status, code: 'bad-request', detail: String(e.message) };
  }
}

/** Sends an RFC 7807 problem document. */
export function sendProblem(reply: FastifyReply, status: number, type: string, detail: string): FastifyReply {
  return reply
    .code(status)
    .type('application/problem+json')
    .send(problem(status, type, detail));
}

/**
 * What a route tells /openapi.json beyond its schemas (set as the route's `config.doc`): its success
 * answers and the problem codes it can refuse with. The statuses of those codes come from the server's
 * StatusTable when the document is made, so the document cannot disagree with the edge.
 */
export interface RouteDoc<Code extends string = string> {
  ok: Readonly<Record<number, string>>;
  errors?: readonly Code[];
  /**
   * The problem code for a request its schema refuses: one code, or one per top-level body field
   * (`*` for any other), so schema checks answer with the codes the handler's own checks use.
   */
  invalid?: Code | Readonly<Record<string, Code>>;
  /** How to call the route right: the detail of a refused request starts with it. */
  usage?: string;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    doc?: RouteDoc;
  }
}

const PROBLEM_SCHEMA = {
  type: 'object',
  required: ['type', 'title', 'status', 'detail'],
  properties: {
    type: { type: 'string', description: 'https://cloister.dev/problems/<code>' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' },
  },
} as const;

/**
 * OpenAPI responses for a route: its success answers, and one problem response per status its error
 * codes map to, naming the codes (`describe` may say more about one).
 */
export function openApiResponses<Code extends string>(
  doc: RouteDoc<Code>,
  table: StatusTable<Code>,
  describe: (code: Code) => string = (c) => c,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [status, description] of Object.entries(doc.ok)) out[status] = { description };
  const byStatus = new Map<number, string[]>();
  for (const code of doc.errors ?? []) {
    const status = table[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), describe(code)]);
  }
  for (const [status, codes] of [...byStatus].sort(([a], [b]) => a - b)) {
    out[String(status)] = {
      description: `RFC 7807 problem; type: ${codes.join(', ')}`,
      content: { 'application/problem+json': { schema: PROBLEM_SCHEMA } },
    };
  }
  return out;
}

/**
 * The refusal for a request a route's schema refused (Fastify's FST_ERR_VALIDATION): the code from
 * the route's `doc.invalid`, the detail its `doc.usage` and the schema's reason; undefined for any
 * other error or a route that names no code.
 */
export function invalidRequest<Code extends string>(
  err: unknown,
  doc: RouteDoc<Code> | undefined,
): { code: Code; detail: string } | undefined {
  const e = err as Partial<FastifyError>;
  if (!e.validation || !doc?.invalid) return undefined;
  const detail = doc.usage ? `${doc.usage}: ${String(e.message)}` : String(e.message);
  if (typeof doc.invalid === 'string') return { code: doc.invalid as Code, detail };
  const first = e.validation[0];
  const params = first?.params as { missingProperty?: unknown } | undefined;
  const field =
    typeof params?.missingProperty === 'string' && first?.instancePath === ''
      ? params.missingProperty
      : (first?.instancePath.split('/')[1] ?? '');
  const byField = doc.invalid as Readonly<Record<string, Code>>;
  const code = byField[field] ?? byField['*'];
  return code === undefined ? undefined : { code, detail };
}
export { CACERT_ENV, checkClientUrl, clientFetch, fetchTrusting, readCaFile } from './client.js';
export {
  checkListen,
  type HttpSetupCode,
  HttpSetupError,
  isLoopback,
  probeListen,
  readTlsFiles,
  type TlsFiles,
  type TlsOptions,
  watchTlsFiles,
} from './tls.js';
export { listenOnUnixSocket, type SocketSetupCode, type UnixSocketOptions } from './unix-socket.js';
export { clientGone, limitedBody, rawBodies, readBody, sendResponse, webRequest } from './web.js';
