/**
 * HTTP surface of the key broker (fastify): the KBS protocol under /kbs/v0, the admin API under
 * /admin/v1, /metrics, /healthz, /readyz and /openapi.json. Every error is RFC 7807 JSON with a 4xx
 * status unless the broker itself failed (500) or its database is out of reach (503 with
 * Retry-After); bad input never yields a 500.
 */
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import { ProtocolError, SESSION_COOKIE } from '../wire/kbs.js';
import { problem } from '../wire/problem.js';
import type { AdminApi } from './admin.js';
import type { Broker } from './broker.js';
import type { Metrics } from './metrics.js';
import { openApiDocument } from './openapi.js';
import { ConflictError, NotFoundError, StoreUnavailableError } from './store/types.js';

export interface ServerOptions {
  broker: Broker;
  admin: AdminApi;
  metrics: Metrics;
  /** Largest accepted request body in bytes. */
  bodyLimit: number;
  /** Token bucket per client address; 0 disables. Health probes are exempt. */
  rateLimit: { perSecond: number; burst: number };
  /** Proxies (addresses/CIDRs) whose X-Forwarded-For names the client; empty: none. */
  trustProxy: string[];
  requestTimeoutMs: number;
  sessionTtlSeconds: number;
  /** Log sink for one-line events; dev mode prefixes every line. */
  log: (line: string) => void;
  /** Resolves when the store's database answers now (see `KbsStore.ping`). */
  ready: () => Promise<void>;
}

/** Seconds a client is asked to wait before retrying while the database is out of reach. */
const RETRY_AFTER_SECONDS = '2';

/** How long one database check answers /readyz for. */
const READY_CACHE_MS = 1000;

/**
 * `check` shared by everyone who asks while it runs, and its answer for READY_CACHE_MS after: /readyz
 * is not rate-limited (probes must answer while a client is throttled), so without this a flood of
 * probes from anyone would be a flood of database queries, each holding a pooled connection that the
 * broker's own requests then wait for.
 */
function sharedCheck(check: () => Promise<void>): () => Promise<void> {
  let current: Promise<void> | undefined;
  let settledAt = Number.NEGATIVE_INFINITY;
  let running = false;
  return () => {
    if (current && (running || performance.now() - settledAt < READY_CACHE_MS)) return current;
    running = true;
    current = check().finally(() => {
      running = false;
      settledAt = performance.now();
    });
    return current;
  };
}

class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  constructor(private readonly o: { perSecond: number; burst: number }) {}

  take(client: string): boolean {
    if (this.o.perSecond <= 0) return true;
    const now = performance.now();
    const b = this.buckets.get(client) ?? { tokens: this.o.burst, at: now };
    b.tokens = Math.min(this.o.burst, b.tokens + ((now - b.at) / 1000) * this.o.perSecond);
    b.at = now;
    if (this.buckets.size > 100_000) this.buckets.clear();
    this.buckets.set(client, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}

function cookie(req: FastifyRequest, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return v.join('=');
  }
  return undefined;
}

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined;
}

export function sendProblem(reply: FastifyReply, status: number, type: string, detail: string): FastifyReply {
  return reply
    .code(status)
    .type('application/problem+json')
    .send(problem(status, type, detail));
}

export async function createServer(o: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    bodyLimit: o.bodyLimit,
    requestTimeout: o.requestTimeoutMs,
    connectionTimeout: o.requestTimeoutMs,
    keepAliveTimeout: 5000,
    logger: false,
    return503OnClosing: true,
    // Only listed proxies may say who the client is; anyone else could pick a fresh bucket per request.
    trustProxy: o.trustProxy.length > 0 ? o.trustProxy : false,
  });
  const limiter = new RateLimiter(o.rateLimit);

  // Raw bodies for admin resource values.
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) =>
    done(null, body),
  );

  app.addHook('onRequest', async (req, reply) => {
    // Probes must stay cheap and answer while a client is being throttled.
    if ((req.routeOptions.config as { rateLimited?: boolean } | undefined)?.rateLimited === false) return;
    if (!limiter.take(req.ip)) {
      o.metrics.inc('kbs_rate_limited_total', 'Requests refused by the per-client rate limit');
      return sendProblem(
        reply.header('retry-after', '1'),
        429,
        'rate-limited',
        'too many requests from this client; retry later',
      );
    }
  });

  app.setErrorHandler((err: FastifyError | Error, _req, reply) => {
    if (err instanceof ProtocolError) return sendProblem(reply, err.status, err.type, err.message);
    if (err instanceof NotFoundError) return sendProblem(reply, 404, 'not-found', err.message);
    if (err instanceof ConflictError) return sendProblem(reply, 409, 'conflict', err.message);
    if (err instanceof StoreUnavailableError) {
      o.log(`store unavailable (${err.code}): ${err.message}`);
      o.metrics.inc('kbs_store_unavailable_total', 'Requests refused because the database was out of reach', {
        code: err.code,
      });
      return sendProblem(
        reply.header('retry-after', RETRY_AFTER_SECONDS),
        503,
        err.code === 'outcome-unknown' ? 'store-outcome-unknown' : 'store-unavailable',
        err.message,
      );
    }
    const status = (err as FastifyError).statusCode;
    if (status && status >= 400 && status < 500) {
      const code = (err as FastifyError).code ?? 'bad-request';
      const names: Record<string, string> = {
        FST_ERR_CTP_INVALID_JSON_BODY: 'malformed-json',
        FST_ERR_CTP_EMPTY_JSON_BODY: 'malformed-json',
        FST_ERR_CTP_BODY_TOO_LARGE: 'body-too-large',
        FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported-media-type',
      };
      const detail =
        code === 'FST_ERR_CTP_BODY_TOO_LARGE'
          ? `request body exceeds ${o.bodyLimit} bytes`
          : code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE'
            ? `unsupported content type ${String(_req.headers['content-type'])}: send application/json`
            : err.message;
      return sendProblem(reply, status, names[code] ?? 'bad-request', detail);
    }
    o.log(`error: ${err.stack ?? err.message}`);
    o.metrics.inc('kbs_internal_errors_total', 'Requests that failed inside the broker');
    return sendProblem(reply, 500, 'internal', 'the broker failed to process the request; see its log');
  });
  app.setNotFoundHandler((req, reply) =>
    sendProblem(reply, 404, 'no-route', `no route ${req.method} ${req.url}`),
  );

  const json = (req: FastifyRequest) => {
    if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) {
      throw new ProtocolError(415, 'unsupported-media-type', 'send the body as application/json');
    }
    return req.body;
  };

  app.post('/kbs/v0/auth', async (req, reply) => {
    const { challenge, session } = await o.broker.auth(json(req));
    o.metrics.inc('kbs_auth_total', 'Challenges issued', { tee: session.tee });
    reply.header(
      'set-cookie',
      `${SESSION_COOKIE}=${session.id}; Max-Age=${o.sessionTtlSeconds}; Path=/kbs/v0; HttpOnly; SameSite=Strict`,
    );
    return challenge;
  });

  app.post('/kbs/v0/attest', async (req) => {
    const started = performance.now();
    try {
      const r = await o.broker.attest(cookie(req, SESSION_COOKIE), json(req));
      o.metrics.inc('kbs_attest_total', 'Attestations', { result: 'ok' });
      return r;
    } catch (e) {
      o.metrics.inc('kbs_attest_total', 'Attestations', {
        result: e instanceof ProtocolError ? e.type : 'error',
      });
      throw e;
    } finally {
      o.metrics.observe('kbs_attest_seconds', 'Attestation latency', (performance.now() - started) / 1000);
    }
  });

  app.get<{ Params: { '*': string } }>('/kbs/v0/resource/*', async (req) => {
    const path = req.params['*'];
    const creds = { sessionId: cookie(req, SESSION_COOKIE), bearer: bearer(req) };
    try {
      const { jwe } = await o.broker.resource(creds, path);
      o.metrics.inc('kbs_resource_total', 'Resource requests', { result: 'released' });
      return jwe;
    } catch (e) {
      o.metrics.inc('kbs_resource_total', 'Resource requests', {
        result: e instanceof ProtocolError ? e.type : 'error',
      });
      throw e;
    }
  });

  app.get('/healthz', { config: { rateLimited: false } }, async () => ({ status: 'ok' }));
  // Readiness, unlike liveness, follows the database: a load balancer stops sending requests to a
  // broker that cannot reach it, and a restart would not help.
  const ready = sharedCheck(o.ready);
  app.get('/readyz', { config: { rateLimited: false } }, async (_req, reply) => {
    try {
      await ready();
    } catch (e) {
      return sendProblem(
        reply.header('retry-after', RETRY_AFTER_SECONDS),
        503,
        'not-ready',
        `the store's database does not answer: ${(e as Error).message}`,
      );
    }
    return { status: 'ready' };
  });
  app.get('/metrics', async (_req, reply) =>
    reply.type('text/plain; version=0.0.4').send(o.metrics.render()),
  );
  app.get('/openapi.json', async () => openApiDocument());

  o.admin.register(app);
  return app;
}
