/**
 * The agent's local API (Node-only): HTTP/1.1 over a Unix socket (mode 0600), so a workload in any
 * language can get keys, tokens, evidence and sealed files without linking Cloister. Modelled on the
 * Confidential Containers confidential-data-hub (GET /resource/<repo>/<type>/<tag>); docs/agent-api.md.
 *
 *   GET  /healthz                          {"status":"ok","tee":kind,"insecure":bool}
 *   GET  /token                            the EAR token (application/jwt)
 *   GET  /resource/<repo>/<type>/<tag>     the resource's bytes
 *   GET  /evidence?report_data=<hex>       raw evidence for ≤ 64 bytes of report data (format=json: with auxblob)
 *   POST /unseal                           sealed stream → plaintext stream (key from the header's kbs URI)
 *   POST /seal?to=kbs:///…[&to=…][&name=…] plaintext stream → sealed stream
 *
 * It stands on the shared Fastify stack (src/http) and maps its codes to statuses in one table,
 * AGENT_API_STATUS. Errors are RFC 7807 problem documents. A streamed body that fails after its first bytes were sent
 * (a tampered chunk in /unseal) cannot change its status any more: the connection is then cut before
 * the final chunk, so clients see an incomplete response rather than a clean end.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify';
import {
  createHttp,
  frameworkRefusal,
  listenOnUnixSocket,
  rawBodies,
  type StatusTable,
  sendResponse,
} from '../http/index.js';
import type { Recipient } from '../seal/index.js';
import {
  beginSeal,
  headerLengthOf,
  openStream,
  parseHeader,
  SealFormatError,
  sealStream,
} from '../seal/index.js';
import { bestChunkCipher, pullFrom } from '../seal/node.js';
import { concatBytes, fromBase64, fromHex, toBase64Url } from '../util/index.js';
import { problem, RESOURCE_PATH } from '../wire/index.js';
import type { CollectionError, CpuAttester, CpuKind } from './evidence/types.js';
import { KbsClientError } from './kbs-client.js';
import { AgentError, KekCache, type ResourceSource } from './keys.js';

export interface AgentApiOptions {
  kbs: ResourceSource;
  tee: { kind: CpuKind; attester: CpuAttester };
  /** One line per request and per refusal (never secrets). */
  log?: (line: string) => void;
}

/** Every refusal of the local API; each names a row of AGENT_API_STATUS. */
export type AgentApiCode =
  | 'bad-request'
  | 'bad-resource-path'
  | 'bad-report-data'
  | 'bad-recipient'
  | 'no-recipient'
  | 'bad-uri'
  | 'no-kbs-recipient'
  | 'sealed-input'
  | 'refused-by-broker'
  | 'resource-not-found'
  | 'not-found'
  | 'method-not-allowed'
  | 'http-version'
  | 'broker-unreachable'
  | 'broker-error'
  | 'agent-failed'
  | 'evidence-failed'
  | 'internal';

/** The local API's one code → status table. */
export const AGENT_API_STATUS = {
  'bad-request': 400,
  'bad-resource-path': 400,
  'bad-report-data': 400,
  'bad-recipient': 400,
  'no-recipient': 400,
  'bad-uri': 400,
  'no-kbs-recipient': 400,
  'sealed-input': 400,
  'refused-by-broker': 403,
  'resource-not-found': 404,
  'not-found': 404,
  'method-not-allowed': 405,
  'http-version': 505,
  'broker-unreachable': 502,
  'broker-error': 502,
  'agent-failed': 502,
  'evidence-failed': 500,
  internal: 500,
} as const satisfies StatusTable<AgentApiCode>;

/**
 * A refusal of the local API. `type` names the problem document's type; it says more than the code
 * where a lower error's own code is worth passing on (`sealed-chunk-tampered`, `evidence-…`, `bad-kek`).
 */
export class AgentApiError extends Error {
  override name = 'AgentApiError';
  readonly type: string;
  constructor(
    readonly code: AgentApiCode,
    message: string,
    type?: string,
  ) {
    super(message);
    this.type = type ?? code;
  }
}

function toApiError(e: unknown): AgentApiError {
  if (e instanceof AgentApiError) return e;
  if (e instanceof KbsClientError) {
    if (e.status === undefined) return new AgentApiError('broker-unreachable', e.message);
    if (e.status === 404) return new AgentApiError('resource-not-found', e.message);
    if (e.status === 401 || e.status === 403) return new AgentApiError('refused-by-broker', e.message);
    return new AgentApiError('broker-error', e.message);
  }
  if (e instanceof SealFormatError) return new AgentApiError('sealed-input', e.message, `sealed-${e.code}`);
  if (e instanceof AgentError) {
    if (e.code === 'bad-uri' || e.code === 'no-kbs-recipient') return new AgentApiError(e.code, e.message);
    return new AgentApiError('agent-failed', e.message, e.code);
  }
  if ((e as Error)?.name === 'CollectionError')
    return new AgentApiError(
      'evidence-failed',
      (e as Error).message,
      `evidence-${(e as CollectionError).code}`,
    );
  const refusal = frameworkRefusal(e, 0);
  if (refusal) return new AgentApiError('bad-request', refusal.detail);
  return new AgentApiError('internal', (e as Error)?.message ?? String(e));
}

/**
 * Streamed answers end on a failure by cutting the connection before the final chunk, which only
 * HTTP/1.1's chunked encoding shows: in HTTP/1.0 the end of the connection is the end of the body, so a
 * plaintext cut at a tampered chunk would look whole. Those clients are refused before any body is sent.
 */
function streamable(request: FastifyRequest): void {
  if (request.raw.httpVersion !== '1.1')
    throw new AgentApiError(
      'http-version',
      `streamed bodies need HTTP/1.1 (chunked encoding), not HTTP/${request.raw.httpVersion}`,
    );
}

/**
 * Sends bytes with their length; a string body would have Fastify add a charset to the media type,
 * which clients matching `application/jwt` or `application/problem+json` exactly would not expect.
 */
function sendBytes(
  reply: FastifyReply,
  status: number,
  type: string,
  body: Uint8Array | string,
  headers: Record<string, string> = {},
): FastifyReply {
  const b =
    typeof body === 'string' ? Buffer.from(body) : Buffer.from(body.buffer, body.byteOffset, body.length);
  return reply
    .code(status)
    .headers({ 'content-type': type, ...headers })
    .send(b);
}

function send(
  reply: FastifyReply,
  type: string,
  body: Uint8Array | string,
  headers: Record<string, string> = {},
) {
  return sendBytes(reply, 200, type, body, { 'cache-control': 'no-store', ...headers });
}

/** Reads a request to its end, dropping the bytes (it may already be half read through an iterator). */
function drain(req: IncomingMessage): Promise<void> {
  if (req.readableEnded || req.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const pump = () => {
      while (req.read() !== null);
    };
    req.on('readable', pump);
    req.once('end', resolve);
    req.once('close', resolve);
    req.once('error', () => resolve());
    pump();
  });
}

/** Reads the request up to the end of the sealed header; returns the header and a stream of the whole body. */
async function sealedRequest(req: IncomingMessage) {
  const it = (req as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  let head: Uint8Array = new Uint8Array(0);
  let hl: number | undefined;
  while (hl === undefined || head.length < hl) {
    const { done, value } = await it.next();
    if (done) {
      throw new SealFormatError(
        head.length === 0 ? 'not-sealed' : 'truncated',
        head.length === 0 ? 'the request body is empty, not a sealed file' : 'the sealed header is truncated',
      );
    }
    head = concatBytes(head, value);
    if (hl === undefined && head.length >= 16) hl = headerLengthOf(head);
  }
  const header = parseHeader(head.subarray(0, hl));
  let first: Uint8Array | undefined = head;
  const body = new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        if (first) {
          c.enqueue(first);
          first = undefined;
          return;
        }
        const { done, value } = await it.next();
        if (done) c.close();
        else c.enqueue(value);
      },
    },
    { highWaterMark: 0 },
  );
  return { header, body };
}

function recipientFor(spec: string, keys: KekCache): Promise<Recipient> | Recipient {
  if (spec.startsWith('kbs:')) return keys.get(spec).then((k) => ({ type: 'kbs', uri: spec, kek: k.secret }));
  if (spec.startsWith('hpke:')) {
    let publicKey: Uint8Array;
    try {
      publicKey = fromBase64(spec.slice(5));
    } catch {
      publicKey = new Uint8Array(0);
    }
    if (publicKey.length !== 32)
      throw new AgentApiError(
        'bad-recipient',
        `to=${spec}: an HPKE recipient is hpke:<base64url X25519 public key>`,
      );
    return { type: 'hpke', publicKey };
  }
  throw new AgentApiError(
    'bad-recipient',
    `to=${spec}: a recipient is kbs:///<repo>/<type>/<tag> or hpke:<base64url key>`,
  );
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;
type Method = (typeof METHODS)[number];

export class AgentApi {
  readonly keys: KekCache;
  constructor(private readonly o: AgentApiOptions) {
    this.keys = new KekCache(o.kbs);
  }

  /** Adds the API's routes and its error edge to `app`. */
  register(app: FastifyInstance): void {
    const log = this.o.log ?? (() => {});
    rawBodies(app);
    app.addHook('onResponse', async (request, reply) => {
      // Refusals and cut streams are logged where they happen, with their reason.
      if (reply.statusCode < 400 && reply.raw.writableFinished)
        log(`${request.method} ${pathOf(request)} → ${reply.statusCode}`);
    });
    app.setErrorHandler(async (e, request, reply) => {
      const p = toApiError(e);
      const status = AGENT_API_STATUS[p.code];
      log(`${request.method} ${pathOf(request)} → ${status} ${p.type}: ${p.message}`);
      // Read (and drop) the rest of the body first: clients that send the whole body before reading
      // the answer (Python's http.client) would otherwise get a broken pipe instead of the problem.
      await drain(request.raw);
      return sendBytes(
        reply,
        status,
        'application/problem+json',
        JSON.stringify(problem(status, p.type, p.message)),
      );
    });
    app.setNotFoundHandler((request) => {
      throw new AgentApiError(
        'not-found',
        `no route ${request.method} ${pathOf(request)} (see docs/agent-api.md)`,
      );
    });

    /** `handler` for `method` on `url`; any other method is refused with 405. */
    const only = (method: 'GET' | 'POST', url: string, handler: RouteHandlerMethod) => {
      app.route({ method, url, handler, exposeHeadRoute: false });
      app.route({
        method: METHODS.filter((m): m is Method => m !== method),
        url,
        handler: (request) => {
          throw new AgentApiError(
            'method-not-allowed',
            `${pathOf(request)} takes ${method}, not ${request.method}`,
          );
        },
      });
    };
    /** The body stream's failure after its first bytes: the connection is cut, and the log says why. */
    const cut = (request: FastifyRequest) => (e: unknown) => {
      const p = toApiError(e);
      log(`${request.method} ${pathOf(request)} → stream cut after status 200: ${p.type}: ${p.message}`);
    };

    only('GET', '/healthz', (_request, reply) =>
      send(
        reply,
        'application/json',
        JSON.stringify({ status: 'ok', tee: this.o.tee.kind, insecure: this.o.tee.attester.insecure }),
      ),
    );
    only('GET', '/token', async (_request, reply) =>
      send(reply, 'application/jwt', await this.o.kbs.token()),
    );
    only('GET', '/resource/*', async (request, reply) => {
      let rp: string;
      try {
        rp = decodeURIComponent(pathOf(request).slice('/resource/'.length));
      } catch {
        throw new AgentApiError('bad-resource-path', 'the resource path is not valid percent-encoding');
      }
      if (!RESOURCE_PATH.test(rp))
        throw new AgentApiError('bad-resource-path', `"${rp}" is not <repository>/<type>/<tag>`);
      return send(reply, 'application/octet-stream', await this.o.kbs.getResource(rp));
    });
    only('GET', '/evidence', async (request, reply) => {
      const query = searchOf(request);
      const hex = query.get('report_data') ?? '';
      if (!/^([0-9a-fA-F]{2}){0,64}$/.test(hex))
        throw new AgentApiError('bad-report-data', 'report_data must be hex, at most 64 bytes (128 digits)');
      const e = await this.o.tee.attester.collect(fromHex(hex));
      if (query.get('format') === 'json') {
        return send(
          reply,
          'application/json',
          JSON.stringify({
            kind: e.kind,
            evidence: toBase64Url(e.evidence),
            ...(e.auxblob && e.auxblob.length > 0 ? { auxblob: toBase64Url(e.auxblob) } : {}),
          }),
        );
      }
      return send(reply, 'application/octet-stream', e.evidence, { 'x-cloister-tee': e.kind });
    });
    only('POST', '/unseal', async (request, reply) => {
      streamable(request);
      const { header, body } = await sealedRequest(request.raw);
      const key = await this.keys.forHeader(header, 'the request body');
      return sendStream(reply, body.pipeThrough(openStream(key, bestChunkCipher())), cut(request), {
        'x-cloister-name': encodeURIComponent(header.name),
        ...(header.contentType ? { 'x-cloister-content-type': encodeURIComponent(header.contentType) } : {}),
      });
    });
    only('POST', '/seal', async (request, reply) => {
      streamable(request);
      const query = searchOf(request);
      const to = query.getAll('to');
      if (to.length === 0)
        throw new AgentApiError(
          'no-recipient',
          'give at least one recipient: /seal?to=kbs:///<repo>/<type>/<tag>',
        );
      const recipients = await Promise.all(to.map((s) => recipientFor(s, this.keys)));
      const length = request.headers['content-length'];
      const ctx = await beginSeal({
        recipients,
        name: query.get('name') ?? '',
        contentType: query.get('content_type') ?? '',
        ...(length !== undefined ? { plaintextLength: Number(length) } : {}),
        cipher: bestChunkCipher(),
      });
      return sendStream(reply, pullFrom(request.raw).pipeThrough(sealStream(ctx)), cut(request), {});
    });
  }
}

/**
 * A streamed 200: the status goes out with the first bytes, so a body that fails before them is still
 * answered with a problem; one that fails later cuts the connection before the final chunk, so the
 * client cannot mistake what it got for a complete body.
 */
function sendStream(
  reply: FastifyReply,
  body: ReadableStream<Uint8Array>,
  onCut: (e: unknown) => void,
  headers: Record<string, string>,
): FastifyReply {
  return sendResponse(
    reply,
    new Response(body, {
      headers: { 'content-type': 'application/octet-stream', 'cache-control': 'no-store' },
    }),
    headers,
    onCut,
  );
}

function pathOf(request: FastifyRequest): string {
  return new URL(request.url, 'http://agent').pathname;
}

function searchOf(request: FastifyRequest): URLSearchParams {
  return new URL(request.url, 'http://agent').searchParams;
}

/** Serves the API on a Unix socket, mode 0600. `close()` stops it and removes the socket. */
export async function serveAgentApi(
  socketPath: string,
  o: AgentApiOptions,
): Promise<{ app: FastifyInstance; api: AgentApi; close(): Promise<void> }> {
  const api = new AgentApi(o);
  // Bodies are streamed (rawBodies), so the body limit is never reached; the timeouts are Node's
  // defaults, which the API had before it stood on Fastify: a sealed upload of gigabytes may take minutes.
  const app = createHttp({
    bodyLimit: Number.MAX_SAFE_INTEGER,
    timeouts: { requestMs: 300_000, headersMs: 60_000, keepAliveMs: 5_000 },
  });
  api.register(app);
  const socket = await listenOnUnixSocket(app, socketPath, {
    label: `--socket ${socketPath}`,
    other: 'another --socket',
    refuse: (code, message) => new AgentError(code, message),
  });
  return {
    app,
    api,
    async close() {
      await socket.close();
      await api.keys.clear();
    },
  };
}
