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
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { encodeKeyConfigList, ReplayCache, type ReplayGuard } from '../ohttp/index.js';
import { nodeBackend } from '../ohttp/node.js';
import { fromHex, toBase64Url, toHex } from '../util/bytes.js';
import {
  type AttestationDocument,
  IDENTITY_TYPE,
  type InferenceIdentity,
  identityReportData,
  type SoftwareIdentity,
} from '../wire/inference-identity.js';
import { attestIdentity, type ServerTee } from './attestation.js';
import { errorBody, InferError, toInferError } from './errors.js';
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

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-headers': 'content-type, incremental',
  'access-control-allow-methods': 'GET, POST, OPTIONS',
};

async function readBody(req: IncomingMessage, limit: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of limitedBody(req, limit)) parts.push(chunk);
  return new Uint8Array(Buffer.concat(parts));
}

/** The body as it arrives, refused (413) once it passes `limit` bytes. */
async function* limitedBody(req: IncomingMessage, limit: number): AsyncGenerator<Uint8Array> {
  const declared = Number(req.headers['content-length']);
  if (declared > limit)
    throw new InferError(413, 'body_too_large', `the request body is over ${limit} bytes`);
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new InferError(413, 'body_too_large', `the request body is over ${limit} bytes`);
    yield new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length);
  }
}

/** Writes a web Response to a Node response, streaming its body; cancels the body if the client leaves. */
async function send(
  res: ServerResponse,
  response: Response,
  extra: Record<string, string> = {},
): Promise<void> {
  const headers: Record<string, string> = { ...extra };
  response.headers.forEach((v, k) => {
    headers[k] = v;
  });
  res.writeHead(response.status, headers);
  if (!response.body) {
    res.end();
    return;
  }
  const reader = response.body.getReader();
  res.on('close', () => {
    if (!res.writableFinished) reader.cancel().catch(() => {});
  });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!res.write(value))
        await new Promise<void>((resolve) => res.once('drain', resolve).once('close', resolve));
      if (res.destroyed) return;
    }
    res.end();
  } catch {
    // The body failed mid-stream (or the client left): the response cannot change status now.
    res.destroy();
  }
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  extra: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...extra });
  res.end(JSON.stringify(body));
}

function sendProblem(res: ServerResponse, e: GatewayError): void {
  sendJson(
    res,
    e.status,
    { type: e.problemType, title: e.code, status: e.status, detail: e.message },
    { 'content-type': 'application/problem+json', ...CORS },
  );
}

export async function startInferenceServer(o: InferenceServerOptions): Promise<InferenceServer> {
  const replayWindowMs = o.replayWindowMs ?? 120_000;
  const maxBodyBytes = o.maxBodyBytes ?? 1 << 20;
  const requestTimeoutMs = o.timeouts?.requestMs ?? 60_000;
  const headersTimeoutMs = Math.min(o.timeouts?.headersMs ?? 30_000, requestTimeoutMs);
  const keepAliveTimeoutMs = o.timeouts?.keepAliveMs ?? 5_000;
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
    models: o.models.map((m) => ({ id: m.id, digest: m.digest, format: m.format })),
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
      throw new InferError(400, 'bad_nonce', 'nonce must be 1 to 64 bytes in hex', 'nonce');
    }
    const release = await attestQueue.acquire(signal);
    try {
      return await attestIdentity({ ...identity, nonce: toHex(fromHex(nonceHex)) }, o.tee, o.ear);
    } finally {
      release();
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const ac = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) ac.abort();
    });
    if (method === 'OPTIONS') {
      res.writeHead(204, CORS).end();
      return;
    }
    if (path === '/v1/attestation' && method === 'GET') {
      const nonce = url.searchParams.get('nonce');
      sendJson(res, 200, nonce === null ? attestation : await freshAttestation(nonce, ac.signal), {
        'cache-control': 'no-store',
        ...CORS,
      });
      return;
    }
    if (path === '/.well-known/ohttp-gateway') {
      if (method === 'GET') {
        res.writeHead(200, {
          'content-type': 'application/ohttp-keys',
          'cache-control': 'max-age=60',
          ...CORS,
        });
        res.end(keyList);
        return;
      }
      if (method !== 'POST') throw new InferError(405, 'method_not_allowed', 'the gateway takes POST');
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== OHTTP_REQUEST_TYPE && type !== OHTTP_CHUNKED_REQUEST_TYPE) {
        throw new GatewayError(
          415,
          'bad_content_type',
          `the gateway takes ${OHTTP_REQUEST_TYPE} or ${OHTTP_CHUNKED_REQUEST_TYPE}`,
        );
      }
      const chunked = type === OHTTP_CHUNKED_REQUEST_TYPE;
      const out = await gateway(
        chunked
          ? { chunked, body: limitedBody(req, maxBodyBytes) }
          : { chunked, body: await readBody(req, maxBodyBytes) },
        ac.signal,
      );
      await send(
        res,
        new Response(out.body instanceof Uint8Array ? out.body.slice() : out.body, {
          headers: { 'content-type': out.contentType },
        }),
        {
          'cache-control': 'no-store',
          // draft-ietf-ohai-chunked-ohttp: tells relays to forward the chunks as they come.
          ...(out.incremental ? { incremental: '?1' } : {}),
          ...CORS,
        },
      );
      return;
    }
    if (path === '/v1/collateral' && method === 'GET' && o.ui) {
      await proxyCollateral(url.searchParams.get('url') ?? '', res);
      return;
    }
    if (path === '/healthz' && method === 'GET') {
      sendJson(res, 200, {
        status: 'ok',
        models: o.models.map((m) => ({ id: m.id, active: m.queue.active, queued: m.queue.queued })),
      });
      return;
    }
    if (path.startsWith('/v1/')) {
      if (!o.allowPlaintext) {
        throw new InferError(
          403,
          'plaintext_disabled',
          'plaintext requests are disabled on this server: send them through Oblivious HTTP (POST /.well-known/ohttp-gateway) after verifying GET /v1/attestation',
        );
      }
      const body = method === 'GET' || method === 'HEAD' ? undefined : await readBody(req, maxBodyBytes);
      const headers = new Headers();
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers.set(k, v);
      const request = new Request(`http://localhost${req.url}`, {
        method,
        headers,
        signal: ac.signal,
        ...(body ? { body: body.slice() } : {}),
      });
      await send(res, await handler(request));
      return;
    }
    const asset = o.ui?.get(path === '/' ? '/' : path);
    if (asset && method === 'GET') {
      res.writeHead(200, {
        'content-type': asset.type,
        'cache-control': 'no-cache',
        // The page runs only its own script and talks only to this server.
        'content-security-policy':
          "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'",
      });
      res.end(asset.body);
      return;
    }
    throw new InferError(404, 'not_found', `no route ${method} ${path}`);
  }

  async function proxyCollateral(target: string, res: ServerResponse): Promise<void> {
    let u: URL;
    try {
      u = new URL(target);
    } catch {
      throw new InferError(400, 'bad_url', 'url must be an absolute URL', 'url');
    }
    if (!COLLATERAL_ORIGINS.includes(u.origin)) {
      throw new InferError(
        400,
        'bad_url',
        `collateral comes only from ${COLLATERAL_ORIGINS.join(', ')}`,
        'url',
      );
    }
    let upstream: Response;
    try {
      upstream = await (o.collateralFetch ?? fetch)(u, { signal: AbortSignal.timeout(10_000) });
    } catch (e) {
      throw new InferError(
        502,
        'collateral_unreachable',
        `${u.origin} did not answer: ${(e as Error).message}`,
      );
    }
    const body = new Uint8Array(await upstream.arrayBuffer());
    if (body.length > MAX_COLLATERAL_BYTES)
      throw new InferError(502, 'collateral_too_large', 'the vendor sent too much');
    const headers: Record<string, string> = { 'cache-control': 'no-store' };
    // Intel PCS sends issuer chains in headers; hop-by-hop and cookie headers stay behind.
    upstream.headers.forEach((v, k) => {
      if (
        ![
          'connection',
          'transfer-encoding',
          'content-length',
          'content-encoding',
          'set-cookie',
          'keep-alive',
        ].includes(k)
      )
        headers[k] = v;
    });
    res.writeHead(upstream.status, headers);
    res.end(body);
  }

  const server = createServer(
    {
      // Node times only the request here (408 and close once it is late), never the response, so a
      // slow or stalled upload is cut while a long generation streams on.
      requestTimeout: requestTimeoutMs,
      headersTimeout: headersTimeoutMs,
      keepAliveTimeout: keepAliveTimeoutMs,
      // How often those deadlines are checked (Node's default, 30 s, would let a slow client overstay).
      connectionsCheckingInterval: Math.max(100, Math.min(1000, requestTimeoutMs / 4)),
    },
    (req, res) => {
      handle(req, res).catch((e: unknown) => {
        if (res.headersSent) {
          res.destroy();
          return;
        }
        if (e instanceof GatewayError) {
          sendProblem(res, e);
          return;
        }
        const err = toInferError(e);
        if (err.status >= 500) o.log(`error: ${req.method} ${req.url}: ${(e as Error).stack ?? String(e)}`);
        sendJson(res, err.status, errorBody(err), err.status === 429 ? { 'retry-after': '1' } : {});
      });
    },
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}`,
    attestation,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
