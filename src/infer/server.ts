/**
 * The confidential inference server's HTTP edge (Node-only). Routes:
 *
 *   GET  /v1/attestation[?nonce=HEX]      the attestation document (fresh evidence for a nonce)
 *   GET  /.well-known/ohttp-gateway       the OHTTP key configurations (application/ohttp-keys, RFC 9540)
 *   POST /.well-known/ohttp-gateway       the OHTTP gateway: message/ohttp-req in, message/ohttp-res out;
 *                                         message/ohttp-chunked-req in, message/ohttp-chunked-res out
 *   /v1/models, /v1/chat/completions, …   plaintext OpenAI API, only when the operator allowed it
 *   GET  /healthz                         liveness and queue depths
 *   GET  /v1/collateral?url=U             with --ui: vendor collateral fetched for the browser page, which
 *                                         cannot reach Intel/AMD/NVIDIA itself (CSP, CORS); only those
 *                                         hosts, and the page checks every signature against its own roots
 *   GET  /, /ui/…                         the browser page, with --ui
 *
 * The OHTTP and receipt keys are made here, in the TEE's memory, and never leave it.
 */
import type { AddressInfo } from 'node:net';
import fastifyCors, { type FastifyCorsOptions } from '@fastify/cors';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  checkListen,
  clientGone,
  createHttp,
  type FrameworkCode,
  frameworkRefusal,
  limitedBody,
  rawBodies,
  readBody,
  sendResponse,
  type TlsFiles,
  webRequest,
} from '../http/index.js';
import { encodeKeyConfigList, ReplayCache, type ReplayGuard } from '../ohttp/index.js';
import { nodeBackend } from '../ohttp/node.js';
import { fromHex, toBase64Url, toHex } from '../util/index.js';
import {
  type AttestationDocument,
  IDENTITY_TYPE,
  type InferenceIdentity,
  identityReportData,
  type SoftwareIdentity,
} from '../wire/index.js';
import { attestIdentity, type ServerTee } from './attestation.js';
import { errorBody, errorHeaders, type InferCode, InferError, toInferError } from './errors.js';
import { createGateway, GatewayError, OHTTP_CHUNKED_REQUEST_TYPE, OHTTP_REQUEST_TYPE } from './gateway.js';
import { createOpenAiHandler, type ServedModel } from './openai.js';
import { RequestQueue } from './queue.js';
import { checkServedModels, generateServingKeys, type SharedServingKeys } from './serving-keys.js';

export interface UiAsset {
  type: string;
  body: Uint8Array;
}

export interface InferenceServerOptions {
  models: Array<ServedModel & { format: 'gguf' | 'onnx-bundle' }>;
  tee: ServerTee;
  /** The key broker's EAR token for this TEE, when a broker released the model key. */
  ear: string | null;
  software: SoftwareIdentity;
  /** Lets plaintext OpenAI requests in; off by default, and announced in the attested identity. */
  allowPlaintext: boolean;
  host: string;
  port: number;
  /** Serve HTTPS with these PEM files (reloaded when either changes; reloads are logged). */
  tls?: TlsFiles;
  /** Allow plain HTTP on a non-loopback host (a TLS-terminating proxy in front). */
  insecureHttp?: boolean;
  /** How long the gateway remembers requests for replay protection; Dates may be half of it off. */
  replayWindowMs?: number;
  maxBodyBytes?: number;
  defaultMaxTokens?: number;
  /** Streamed events are padded to a multiple of this many bytes; default 64, 0 turns it off. */
  padStreamTo?: number;
  /** Static files for the browser page, by path ("/" for the page itself); also opens /v1/collateral. */
  ui?: ReadonlyMap<string, UiAsset>;
  /**
   * The OHTTP and receipt keys; default: a fresh set made here. Replicas behind one load balancer
   * share a set released by the key broker (serving-keys.ts).
   */
  keys?: SharedServingKeys;
  /**
   * Where accepted requests are remembered; default: this process (a ReplayCache over the window).
   * Required with `keys`: replicas sharing keys share this too (replay-redis.ts), with the same window,
   * or a request could be replayed to another replica, or to this one once it restarted.
   */
  replay?: ReplayGuard;
  /**
   * Slow clients: the whole request (headers and body) must arrive within `requestMs` (default 60 s),
   * its headers within `headersMs` (default 30 s); an idle kept-alive connection closes after
   * `keepAliveMs` (default 5 s). Only the upload is timed: a response may stream for as long as it lasts.
   */
  timeouts?: { requestMs?: number; headersMs?: number; keepAliveMs?: number };
  /** How /v1/collateral reaches the vendors; default globalThis.fetch. */
  collateralFetch?: typeof fetch;
  log: (line: string) => void;
}

export interface InferenceServer {
  url: string;
  attestation: AttestationDocument;
  close(): Promise<void>;
}

/** The vendor services the collateral route may reach (src/attest/collateral names them). */
export const COLLATERAL_ORIGINS = [
  'https://api.trustedservices.intel.com',
  'https://certificates.trustedservices.intel.com',
  'https://kdsintf.amd.com',
  'https://rim.attestation.nvidia.com',
  'https://ocsp.ndis.nvidia.com',
];
const MAX_COLLATERAL_BYTES = 32 << 20;

const GATEWAY_PATH = '/.well-known/ohttp-gateway';

/**
 * What any web page may call and read: the attestation and the OHTTP gateway, which are public or
 * end-to-end encrypted, with no cookie or credential involved. Everything else (the plaintext OpenAI
 * API, /healthz, /v1/collateral, the page) gets no CORS headers, so another site's page cannot read
 * it, nor pass a preflight to send a JSON request to it.
 */
const CORS_PATHS = new Set(['/v1/attestation', GATEWAY_PATH]);
const CORS = {
  origin: '*',
  allowedHeaders: ['content-type', 'incremental'],
  methods: ['GET', 'POST', 'OPTIONS'],
  // Any OPTIONS to those paths is answered as a preflight, as before the plugin: tools probe without
  // the headers.
  strictPreflight: false,
};

const HOP_BY_HOP = [
  'connection',
  'transfer-encoding',
  'content-length',
  'content-encoding',
  'set-cookie',
  'keep-alive',
];

/** Fastify's own refusals (before a handler runs) in the module's codes. */
const FRAMEWORK_CODES: Readonly<Record<FrameworkCode, InferCode>> = {
  'malformed-json': 'invalid_json',
  'body-too-large': 'body_too_large',
  'unsupported-media-type': 'bad_content_type',
  'bad-request': 'invalid_request',
};

export async function startInferenceServer(o: InferenceServerOptions): Promise<InferenceServer> {
  const replayWindowMs = o.replayWindowMs ?? 120_000;
  const maxBodyBytes = o.maxBodyBytes ?? 1 << 20;
  const requestTimeoutMs = o.timeouts?.requestMs ?? 60_000;
  const headersTimeoutMs = Math.min(o.timeouts?.headersMs ?? 30_000, requestTimeoutMs);
  const keepAliveTimeoutMs = o.timeouts?.keepAliveMs ?? 5_000;
  checkListen({
    host: o.host,
    port: o.port,
    tls: o.tls !== undefined,
    insecureHttp: o.insecureHttp === true,
  });
  const { gateway: gatewayKey, receipt } = o.keys ?? (await generateServingKeys());
  if (o.keys) checkServedModels(o.keys, o.models, o.allowPlaintext);
  if (o.keys && !o.replay) {
    // Keys made here die with the process, so no other process can open what it accepted; shared keys
    // live on, and a memory of requests per process would let a captured request be answered again by
    // another replica, or by this one after a restart.
    throw new Error(
      'shared serving keys need a shared replay store (--replay-redis): without one a captured request could be answered again by another replica or after a restart',
    );
  }
  const keyList = encodeKeyConfigList([gatewayKey.config]);
  const identity: InferenceIdentity = {
    type: IDENTITY_TYPE,
    ohttpKeys: toBase64Url(keyList),
    receiptKey: receipt.publicJwk,
    models: o.models.map((m) => ({
      id: m.id,
      digest: m.digest,
      format: m.format,
      ...(m.adapters?.length
        ? { adapters: m.adapters.map((a) => ({ digest: a.digest, scale: a.scale })) }
        : {}),
    })),
    software: o.software,
    plaintextAllowed: o.allowPlaintext,
    ...(o.keys ? { sharedKeys: o.keys.source } : {}),
  };
  const attestation = await attestIdentity(identity, o.tee, o.ear);
  const handler = createOpenAiHandler({
    models: o.models,
    defaultMaxTokens: o.defaultMaxTokens ?? 256,
    padStreamTo: o.padStreamTo ?? 64,
  });
  const gateway = createGateway({
    keys: [gatewayKey],
    replay: o.replay ?? new ReplayCache({ windowMs: replayWindowMs, maxEntries: 1_000_000 }),
    maxClockSkewMs: replayWindowMs / 2,
    handler,
    receipts: { key: receipt.privateKey, identity: toHex(await identityReportData(identity)) },
    ohttp: nodeBackend,
  });
  // Fresh evidence is a TEE call per request; one at a time keeps a flood from starving inference.
  const attestQueue = new RequestQueue({ concurrency: 1, maxQueued: 32 });

  async function freshAttestation(nonceHex: string, signal: AbortSignal): Promise<AttestationDocument> {
    if (!/^[0-9a-f]{2,128}$/i.test(nonceHex) || nonceHex.length % 2 !== 0) {
      throw new InferError('bad_nonce', 'nonce must be 1 to 64 bytes in hex', 'nonce');
    }
    const release = await attestQueue.acquire(signal);
    try {
      return await attestIdentity({ ...identity, nonce: toHex(fromHex(nonceHex)) }, o.tee, o.ear);
    } finally {
      release();
    }
  }

  const app = createHttp({
    bodyLimit: maxBodyBytes,
    timeouts: { requestMs: requestTimeoutMs, headersMs: headersTimeoutMs, keepAliveMs: keepAliveTimeoutMs },
    ...(o.tls ? { tls: { ...o.tls, log: o.log } } : {}),
  });
  rawBodies(app);
  const tooLarge = () => new InferError('body_too_large', `the request body is over ${maxBodyBytes} bytes`);

  function refuse(reply: FastifyReply, e: InferError): FastifyReply {
    if (e instanceof GatewayError) {
      return reply
        .code(e.status)
        .headers({ 'content-type': 'application/problem+json' })
        .send(jsonBytes({ type: e.problemType, title: e.code, status: e.status, detail: e.message }));
    }
    return reply
      .code(e.status)
      .headers({ 'content-type': 'application/json', ...errorHeaders(e) })
      .send(jsonBytes(errorBody(e)));
  }

  app.setErrorHandler((e, request, reply) => {
    const refusal = frameworkRefusal(e, maxBodyBytes);
    const err = refusal ? new InferError(FRAMEWORK_CODES[refusal.code], refusal.detail) : toInferError(e);
    if (err.status >= 500)
      o.log(`error: ${request.method} ${request.url}: ${(e as Error).stack ?? String(e)}`);
    return refuse(reply, err);
  });
  app.setNotFoundHandler((request, reply) =>
    refuse(reply, new InferError('not_found', `no route ${request.method} ${pathOf(request)}`)),
  );

  // Preflights and the allow-origin header, errors included, on the CORS paths only.
  await app.register(
    fastifyCors,
    () => (request: FastifyRequest, done: (e: Error | null, options: FastifyCorsOptions) => void) =>
      done(null, CORS_PATHS.has(pathOf(request)) ? CORS : { origin: false }),
  );

  app.get<{ Querystring: { nonce?: string } }>('/v1/attestation', async (request, reply) => {
    const nonce = request.query.nonce;
    const doc = nonce === undefined ? attestation : await freshAttestation(nonce, clientGone(reply));
    return reply
      .headers({ 'content-type': 'application/json', 'cache-control': 'no-store' })
      .send(jsonBytes(doc));
  });

  app.get(GATEWAY_PATH, (_request, reply) =>
    reply
      .headers({ 'content-type': 'application/ohttp-keys', 'cache-control': 'max-age=60' })
      .send(Buffer.from(keyList)),
  );
  app.post(GATEWAY_PATH, async (request, reply) => {
    const type = (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== OHTTP_REQUEST_TYPE && type !== OHTTP_CHUNKED_REQUEST_TYPE) {
      throw new GatewayError(
        'bad_content_type',
        `the gateway takes ${OHTTP_REQUEST_TYPE} or ${OHTTP_CHUNKED_REQUEST_TYPE}`,
      );
    }
    const chunked = type === OHTTP_CHUNKED_REQUEST_TYPE;
    const out = await gateway(
      chunked
        ? { chunked, body: limitedBody(request, maxBodyBytes, tooLarge) }
        : { chunked, body: await readBody(request, maxBodyBytes, tooLarge) },
      clientGone(reply),
    );
    return sendResponse(
      reply,
      new Response(out.body instanceof Uint8Array ? out.body.slice() : out.body, {
        headers: { 'content-type': out.contentType },
      }),
      {
        'cache-control': 'no-store',
        // draft-ietf-ohai-chunked-ohttp: tells relays to forward the chunks as they come.
        ...(out.incremental ? { incremental: '?1' } : {}),
      },
    );
  });
  app.route({
    method: ['PUT', 'DELETE', 'PATCH'],
    url: GATEWAY_PATH,
    handler: () => {
      throw new InferError('method_not_allowed', 'the gateway takes POST');
    },
  });

  if (o.ui) {
    app.get<{ Querystring: { url?: string } }>('/v1/collateral', (request, reply) =>
      proxyCollateral(request.query.url ?? '', reply),
    );
  }

  app.get('/healthz', (_request, reply) =>
    reply.send({
      status: 'ok',
      models: o.models.map((m) => ({ id: m.id, active: m.queue.active, queued: m.queue.queued })),
    }),
  );

  // The plaintext OpenAI API (OPTIONS is the CORS plugin's; HEAD follows GET).
  app.route({
    method: ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'],
    url: '/v1/*',
    handler: async (request, reply) => {
      if (!o.allowPlaintext) {
        throw new InferError(
          'plaintext_disabled',
          'plaintext requests are disabled on this server: send them through Oblivious HTTP (POST /.well-known/ohttp-gateway) after verifying GET /v1/attestation',
        );
      }
      const method = request.method;
      const body =
        method === 'GET' || method === 'HEAD' ? undefined : await readBody(request, maxBodyBytes, tooLarge);
      return sendResponse(reply, await handler(webRequest(request, body, clientGone(reply))));
    },
  });

  for (const [path, asset] of o.ui ?? []) {
    app.get(path, (_request, reply) =>
      reply
        .headers({
          'content-type': asset.type,
          'cache-control': 'no-cache',
          // The page runs only its own script and talks only to this server.
          'content-security-policy':
            "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'",
        })
        .send(Buffer.from(asset.body)),
    );
  }

  async function proxyCollateral(target: string, reply: FastifyReply): Promise<FastifyReply> {
    let u: URL;
    try {
      u = new URL(target);
    } catch {
      throw new InferError('bad_url', 'url must be an absolute URL', 'url');
    }
    if (!COLLATERAL_ORIGINS.includes(u.origin)) {
      throw new InferError('bad_url', `collateral comes only from ${COLLATERAL_ORIGINS.join(', ')}`, 'url');
    }
    let upstream: Response;
    try {
      // A redirect is refused, not followed: the allow-list holds for the first URL only, and an open
      // redirect on a vendor host would otherwise reach any address this server can.
      upstream = await (o.collateralFetch ?? fetch)(u, {
        signal: AbortSignal.timeout(10_000),
        redirect: 'error',
      });
    } catch (e) {
      throw new InferError('collateral_unreachable', `${u.origin} did not answer: ${(e as Error).message}`);
    }
    const body = new Uint8Array(await upstream.arrayBuffer());
    if (body.length > MAX_COLLATERAL_BYTES)
      throw new InferError('collateral_too_large', 'the vendor sent too much');
    const headers: Record<string, string> = { 'cache-control': 'no-store' };
    // Intel PCS sends issuer chains in headers; hop-by-hop and cookie headers stay behind.
    upstream.headers.forEach((v, k) => {
      if (!HOP_BY_HOP.includes(k)) headers[k] = v;
    });
    return reply.code(upstream.status).headers(headers).send(Buffer.from(body));
  }

  await app.listen({ host: o.host, port: o.port });
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `${o.tls ? 'https' : 'http'}://${host}:${addr.port}`,
    attestation,
    async close() {
      const closing = app.close();
      // Streams in flight (a long generation) would otherwise hold the close until they end.
      app.server.closeAllConnections();
      await closing;
    },
  };
}

/** JSON as bytes: Fastify would add a charset to the media type of a string. */
function jsonBytes(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

/** The request's path, without its query. */
function pathOf(request: FastifyRequest): string {
  const q = request.url.indexOf('?');
  return q < 0 ? request.url : request.url.slice(0, q);
}
