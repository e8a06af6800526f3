/**
 * HTTP surface of the key broker, on the shared stack (src/http): the KBS protocol under /kbs/v0, the
 * admin API under /admin/v1, /metrics, /healthz, /readyz and /openapi.json (made by @fastify/swagger
 * from the route schemas). Every error is RFC 7807 JSON; its status comes from STATUS, the one table
 * of problem codes, with a 4xx unless the broker itself failed (500) or its database is out of reach
 * (503 with Retry-After); bad input never yields a 500.
 */
import fastifyCookie from '@fastify/cookie';
import fastifyRateLimit from '@fastify/rate-limit';
import fastifySwagger from '@fastify/swagger';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { JWK } from 'jose';
import {
  createHttp,
  frameworkRefusal,
  invalidRequest,
  openApiResponses,
  type StatusTable,
  sendProblem,
  type TlsFiles,
} from '../http/index.js';
import { KBS_PROTOCOL_VERSION, ProtocolError, SESSION_COOKIE } from '../wire/index.js';
import type { AdminApi } from './admin.js';
import type { Broker } from './broker.js';
import { KbsError, type KbsHttpCode, type KbsRouteDoc } from './errors.js';
import type { Metrics } from './metrics.js';
import { ConflictError, NotFoundError, StoreUnavailableError } from './store/types.js';
import { CHECKPOINT_BODY_MAX_BYTES, RECEIPT_MAX_BYTES } from './train.js';

export interface ServerOptions {
  broker: Broker;
  admin: AdminApi;
  metrics: Metrics;
  /** Largest accepted request body in bytes. */
  bodyLimit: number;
  /**
   * Per client address: `burst` requests per window of burst/perSecond seconds (perSecond on average);
   * perSecond 0 disables. Health probes are exempt.
   */
  rateLimit: { perSecond: number; burst: number };
  /** Proxies (addresses/CIDRs) whose X-Forwarded-For names the client; empty: none. */
  trustProxy: string[];
  requestTimeoutMs: number;
  sessionTtlSeconds: number;
  /** Log sink for one-line events; dev mode prefixes every line. */
  log: (line: string) => void;
  /** Resolves when the store's database answers now (see `KbsStore.ping`). */
  ready: () => Promise<void>;
  /** What `GET /.well-known/cloister-kbs` publishes: the keys relying parties verify the broker with. */
  publicKeys: PublicKeys;
  /** Serve HTTPS with these files (reloads are logged through `log`). */
  tls?: TlsFiles;
}

/**
 * The broker's public keys: the EAR verification key(s) as a JWKS (for `verify-receipt --ear-key` and
 * `chat --ear-key`), and the transparency log's origin and C2SP verifier key (for `cloister log verify`).
 */
export interface PublicKeys {
  ear: { keys: JWK[] };
  log: { origin: string; verifierKey: string };
}

/**
 * Every problem code the broker answers with, and its status: the compiler refuses a code left out,
 * and no code below this edge carries a status of its own.
 */
export const STATUS: StatusTable<KbsHttpCode> = {
  // The KBS protocol: the request itself.
  'malformed-json': 400,
  'malformed-request': 400,
  'unsupported-version': 400,
  'unsupported-tee': 400,
  'malformed-attestation': 400,
  'malformed-evidence': 400,
  'unusable-key': 400,
  'bad-init-data': 400,
  'bad-resource-path': 400,
  // Sessions and credentials: a 401 makes the TEE's client start again with /auth.
  'no-session': 401,
  'unknown-session': 401,
  'session-expired': 401,
  'nonce-used': 401,
  'nonce-mismatch': 401,
  'attestation-report-data-mismatch': 401,
  'not-attested': 401,
  'token-expired': 401,
  'bearer-disabled': 401,
  'bad-token': 401,
  // Evidence judged and refused, or a release denied: trying again changes nothing.
  'attestation-refused': 403,
  denied: 403,
  // Confidential training: a malformed job id or receipt, a session launched for another job (or
  // a receipt it was not launched for), a receipt naming a key the session could not get, a
  // checkpoint advance from anything but the checkpoint held (rollback, fork), a second receipt.
  'bad-job': 400,
  'bad-receipt': 400,
  'job-not-bound': 403,
  'recipient-denied': 403,
  'no-checkpoint': 404,
  'checkpoint-conflict': 409,
  'receipt-exists': 409,
  // The admin API.
  'no-admin-token': 401,
  'bad-admin-token': 401,
  forbidden: 403,
  'unknown-resource': 404,
  'bad-scope': 400,
  'bad-policy': 400,
  'bad-request': 400,
  'bad-ear-token': 400,
  'bad-tenant': 400,
  'bad-refvalue': 400,
  'bad-revocation': 400,
  'bad-range': 400,
  'empty-value': 400,
  'value-too-large': 413,
  // The edge.
  'body-too-large': 413,
  'unsupported-media-type': 415,
  'rate-limited': 429,
  'no-route': 404,
  'not-found': 404,
  conflict: 409,
  internal: 500,
  'store-unavailable': 503,
  'store-outcome-unknown': 503,
  'not-ready': 503,
};

/** A refusal made here at the edge (the rate limit), carried to the error handler like the others. */
class EdgeRefusal extends Error {
  constructor(
    readonly code: 'rate-limited',
    message: string,
  ) {
    super(message);
  }
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

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined;
}

/** The problem `type` of a broker refusal, for metrics labels. */
const problemType = (e: unknown): string =>
  e instanceof KbsError ? e.type : e instanceof ProtocolError ? e.code : 'error';

/** The KBS protocol speaks JSON only: anything else is refused before its body is looked at. */
async function requireJson(req: FastifyRequest): Promise<void> {
  if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) {
    throw new KbsError('unsupported-media-type', 'send the body as application/json');
  }
}

/** The problem responses every route shares (store outages; the limit where it applies). */
const COMMON_ERRORS: readonly KbsHttpCode[] = ['store-unavailable', 'store-outcome-unknown', 'internal'];

const describeCode = (c: KbsHttpCode): string =>
  c === 'attestation-refused'
    ? "attestation-<code> (the verifier's code, e.g. attestation-gpu-not-bound)"
    : c === 'denied'
      ? 'denied (detail exactly "denied by policy", also for an unknown resource)'
      : c;

const KBS_JSON_ERRORS: readonly KbsHttpCode[] = [
  'malformed-json',
  'body-too-large',
  'unsupported-media-type',
];

/** Every metric the broker exports, with the label sets known at start (shown as zeros until counted). */
function declareMetrics(m: Metrics, teeKinds: readonly string[]): void {
  m.counter('kbs_rate_limited_total', 'Requests refused by the per-client rate limit');
  m.counter(
    'kbs_store_unavailable_total',
    'Requests refused because the database was out of reach',
    (['unavailable', 'outcome-unknown'] satisfies StoreUnavailableError['code'][]).map((code) => ({ code })),
  );
  m.counter('kbs_internal_errors_total', 'Requests that failed inside the broker');
  m.counter(
    'kbs_auth_total',
    'Challenges issued',
    teeKinds.map((tee) => ({ tee })),
  );
  // Refusals are labelled by their problem type, which appear as they happen; success is known.
  m.counter('kbs_attest_total', 'Attestations', [{ result: 'ok' }]);
  m.histogram('kbs_attest_seconds', 'Attestation latency');
  m.counter('kbs_resource_total', 'Resource requests', [{ result: 'released' }]);
}

export async function createServer(o: ServerOptions): Promise<FastifyInstance> {
  declareMetrics(o.metrics, o.broker.teeKinds);
  const app = createHttp({
    bodyLimit: o.bodyLimit,
    timeouts: { requestMs: o.requestTimeoutMs, idleMs: o.requestTimeoutMs },
    trustProxy: o.trustProxy,
    strictSchemas: true,
    ...(o.tls ? { tls: { ...o.tls, log: o.log } } : {}),
  });
  const limited = o.rateLimit.perSecond > 0;

  await app.register(fastifyCookie);
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Cloister key broker',
        version: KBS_PROTOCOL_VERSION,
        description:
          'CoCo KBS protocol 0.4.0 plus the Cloister admin API. See docs/kbs.md and docs/kbs-protocol.md.',
      },
      components: {
        securitySchemes: {
          adminToken: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT (EdDSA or ES256), aud cloister-kbs-admin',
          },
        },
      },
    },
    // Wildcard routes take a resource path; problem responses come from each route's doc and STATUS.
    transform: ({ schema, url, route }) => {
      const doc = route.config?.doc as KbsRouteDoc | undefined;
      const wildcard = url.endsWith('/*');
      const errors = [
        ...(doc?.errors ?? []),
        ...(limited && route.config?.rateLimit !== false ? ['rate-limited' as const] : []),
        ...COMMON_ERRORS,
      ];
      return {
        url: wildcard ? `${url.slice(0, -1)}{path}` : url,
        schema: {
          ...schema,
          ...(wildcard
            ? {
                params: {
                  type: 'object',
                  required: ['path'],
                  properties: { path: { type: 'string', description: '<repository>/<type>/<tag>' } },
                },
              }
            : {}),
          ...(doc ? { response: openApiResponses({ ...doc, errors }, STATUS, describeCode) } : {}),
        },
      };
    },
  });
  if (limited) {
    await app.register(fastifyRateLimit, {
      // A fixed window per client: `burst` requests, then nothing until the window ends (Retry-After
      // says when), so perSecond holds on average. docs/kbs.md says how this differs from a bucket.
      max: Math.max(1, Math.floor(o.rateLimit.burst)),
      timeWindow: Math.ceil((Math.max(1, o.rateLimit.burst) / o.rateLimit.perSecond) * 1000),
      // Clients remembered at once; the least recent are forgotten first (they start afresh).
      cache: 100_000,
      onExceeded: () => o.metrics.inc('kbs_rate_limited_total'),
      errorResponseBuilder: () =>
        new EdgeRefusal('rate-limited', 'too many requests from this client; retry later'),
    });
  }

  // Raw bodies for admin resource values.
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) =>
    done(null, body),
  );

  const refuse = (reply: FastifyReply, code: KbsHttpCode, detail: string, type: string = code) =>
    sendProblem(reply, STATUS[code], type, detail);

  app.setErrorHandler((err: FastifyError | Error, req, reply) => {
    if (err instanceof KbsError) return refuse(reply, err.code, err.message, err.type);
    if (err instanceof ProtocolError || err instanceof EdgeRefusal)
      return refuse(reply, err.code, err.message);
    const invalid = invalidRequest(err, req.routeOptions.config?.doc as KbsRouteDoc | undefined);
    if (invalid) return refuse(reply, invalid.code, invalid.detail);
    if (err instanceof NotFoundError) return refuse(reply, 'not-found', err.message);
    if (err instanceof ConflictError) return refuse(reply, 'conflict', err.message);
    if (err instanceof StoreUnavailableError) {
      o.log(`store unavailable (${err.code}): ${err.message}`);
      o.metrics.inc('kbs_store_unavailable_total', { code: err.code });
      return refuse(
        reply.header('retry-after', RETRY_AFTER_SECONDS),
        err.code === 'outcome-unknown' ? 'store-outcome-unknown' : 'store-unavailable',
        err.message,
      );
    }
    // A route may have its own limit (receipts: RECEIPT_MAX_BYTES); the message names the one applied.
    const framework = frameworkRefusal(err, req.routeOptions.bodyLimit ?? o.bodyLimit);
    if (framework) {
      const detail =
        framework.code === 'unsupported-media-type'
          ? `unsupported content type ${String(req.headers['content-type'])}: send application/json`
          : framework.detail;
      return refuse(reply, framework.code, detail);
    }
    o.log(`error: ${err.stack ?? err.message}`);
    o.metrics.inc('kbs_internal_errors_total');
    return refuse(reply, 'internal', 'the broker failed to process the request; see its log');
  });
  app.setNotFoundHandler(limited ? { preHandler: app.rateLimit() } : {}, (req, reply) =>
    refuse(reply, 'no-route', `no route ${req.method} ${req.url}`),
  );

  const doc = (d: KbsRouteDoc): { doc: KbsRouteDoc } => ({ doc: d });

  app.post(
    '/kbs/v0/auth',
    {
      preValidation: requireJson,
      schema: {
        summary: 'Request → Challenge; sets the kbs-session-id cookie',
        body: {
          type: 'object',
          required: ['version', 'tee'],
          properties: {
            version: { type: 'string', examples: [KBS_PROTOCOL_VERSION] },
            tee: { type: 'string', description: 'a kbs_types Tee name, e.g. tdx, snp, sample (dev mode)' },
            'extra-params': {},
          },
        },
      },
      config: doc({
        ok: { 200: 'Challenge {nonce (32 bytes, base64), extra-params}' },
        errors: [...KBS_JSON_ERRORS, 'malformed-request', 'unsupported-version', 'unsupported-tee'],
        invalid: 'malformed-request',
        usage: 'send a KBS Request {"version": "0.4.0", "tee", "extra-params"?}',
      }),
    },
    async (req, reply) => {
      const { challenge, session } = await o.broker.auth(req.body);
      o.metrics.inc('kbs_auth_total', { tee: session.tee });
      reply.setCookie(SESSION_COOKIE, session.id, {
        maxAge: o.sessionTtlSeconds,
        path: '/kbs/v0',
        httpOnly: true,
        sameSite: 'strict',
      });
      return challenge;
    },
  );

  app.post(
    '/kbs/v0/attest',
    {
      preValidation: requireJson,
      // The schema documents the body; parseAttestation enforces it with the protocol's own codes,
      // after the session is checked (a request without a live session is a 401 whatever it sends).
      attachValidation: true,
      schema: {
        summary: 'Attestation → EAR token (ES256 JWT)',
        body: {
          type: 'object',
          required: ['runtime-data', 'tee-evidence'],
          properties: {
            'runtime-data': {
              type: 'object',
              required: ['nonce', 'tee-pubkey'],
              properties: {
                nonce: { type: 'string', description: 'the challenge nonce, exactly as received' },
                'tee-pubkey': {
                  type: 'object',
                  description: 'public JWK: EC P-256/P-384/P-521 or RSA of at least 2048 bits',
                },
              },
            },
            'tee-evidence': {
              type: 'object',
              required: ['primary_evidence'],
              properties: {
                primary_evidence: {
                  description:
                    'per TEE (docs/kbs-protocol.md §4): tdx/sgx {quote, cc_eventlog?}; snp {attestation_report, cert_chain} (guest-components) or {report, vcek?, vlek?}; Azure and sample JSON',
                },
                additional_evidence: {
                  type: 'string',
                  description:
                    'JSON: {"nvidia": {"device_evidence_list": [...]}} (guest-components) or {"nvidia": {"gpus": [...]}}; "" without devices',
                },
              },
            },
            'init-data': {
              type: 'object',
              description: "CoCo init-data {format: 'toml' | 'json', body}",
            },
          },
        },
      },
      config: doc({
        ok: { 200: '{token}' },
        errors: [
          ...KBS_JSON_ERRORS,
          'malformed-attestation',
          'malformed-evidence',
          'unsupported-tee',
          'unusable-key',
          'bad-init-data',
          'no-session',
          'unknown-session',
          'session-expired',
          'nonce-used',
          'nonce-mismatch',
          'attestation-report-data-mismatch',
          'attestation-refused',
        ],
      }),
    },
    async (req) => {
      const started = performance.now();
      try {
        const r = await o.broker.attest(req.cookies[SESSION_COOKIE], req.body);
        o.metrics.inc('kbs_attest_total', { result: 'ok' });
        return r;
      } catch (e) {
        o.metrics.inc('kbs_attest_total', { result: problemType(e) });
        throw e;
      } finally {
        o.metrics.observe('kbs_attest_seconds', (performance.now() - started) / 1000);
      }
    },
  );

  app.get<{ Params: { '*': string } }>(
    '/kbs/v0/resource/*',
    {
      schema: {
        summary:
          'A resource as a flattened JWE to the TEE key (session cookie; an attestation token as bearer only with bearerTokens on)',
      },
      config: doc({
        ok: { 200: 'flattened JWE' },
        errors: [
          'bad-resource-path',
          'no-session',
          'unknown-session',
          'session-expired',
          'not-attested',
          'token-expired',
          'bearer-disabled',
          'bad-token',
          'denied',
        ],
      }),
    },
    async (req) => {
      const path = req.params['*'];
      const creds = { sessionId: req.cookies[SESSION_COOKIE], bearer: bearer(req) };
      try {
        const { jwe } = await o.broker.resource(creds, path);
        o.metrics.inc('kbs_resource_total', { result: 'released' });
        return jwe;
      } catch (e) {
        o.metrics.inc('kbs_resource_total', { result: problemType(e) });
        throw e;
      }
    },
  );

  // Confidential training (train.ts, docs/kbs-protocol.md §8): the same attested session as a resource
  // request (its cookie; never a bearer token), whose checked init-data names the job. Under a
  // Cloister namespace: the CoCo protocol may claim any name under /kbs/v0.
  const SESSION_ERRORS: KbsHttpCode[] = [
    'bad-job',
    'no-session',
    'unknown-session',
    'session-expired',
    'not-attested',
    'token-expired',
    'job-not-bound',
  ];
  const jobParams = {
    type: 'object',
    required: ['job'],
    properties: {
      job: { type: 'string', description: "the job id: lower-case hex SHA-256 of the job's manifest" },
    },
  };
  const checkpointSchema = {
    type: 'object',
    required: ['number', 'sha256'],
    properties: {
      number: { type: 'integer', minimum: 1 },
      sha256: { type: 'string', description: 'lower-case hex SHA-256 of the sealed checkpoint' },
    },
  };
  const session = (req: FastifyRequest) => req.cookies[SESSION_COOKIE];

  app.get<{ Params: { job: string } }>(
    '/cloister/v1/train/:job/checkpoint',
    {
      schema: {
        summary: "A training job's latest checkpoint (attested session for the job)",
        params: jobParams,
      },
      config: doc({ ok: { 200: '{number, sha256}' }, errors: [...SESSION_ERRORS, 'no-checkpoint'] }),
    },
    async (req) => {
      const held = await o.broker.train.latest(session(req), req.params.job);
      if (!held) throw new KbsError('no-checkpoint', 'the broker holds no checkpoint for this job yet');
      return held;
    },
  );

  app.post<{ Params: { job: string } }>(
    '/cloister/v1/train/:job/checkpoint',
    {
      preValidation: requireJson,
      bodyLimit: CHECKPOINT_BODY_MAX_BYTES,
      // The schema documents the body; train.ts checks it after the session (so a request without an
      // attested session is a 401 whatever it sends).
      attachValidation: true,
      schema: {
        summary: "Compare-and-set of a training job's latest checkpoint: prev → next",
        params: jobParams,
        body: {
          type: 'object',
          required: ['prev', 'next'],
          properties: {
            prev: {
              ...checkpointSchema,
              type: ['object', 'null'],
              description: 'the checkpoint held; null before the first',
            },
            next: { ...checkpointSchema, description: 'number: prev.number + 1 (1 for the first)' },
          },
        },
      },
      config: doc({
        ok: { 200: '{number, sha256}: the checkpoint now held' },
        errors: [...KBS_JSON_ERRORS, 'malformed-request', ...SESSION_ERRORS, 'checkpoint-conflict'],
      }),
    },
    async (req) => o.broker.train.advance(session(req), req.params.job, req.body),
  );

  app.get<{ Params: { job: string } }>(
    '/cloister/v1/train/:job/key',
    {
      schema: {
        summary:
          "A training job's checkpoint MAC key, encrypted to the session's TEE key (attested session for the job)",
        params: jobParams,
      },
      config: doc({ ok: { 200: 'flattened JWE of the 32-byte key' }, errors: SESSION_ERRORS }),
    },
    async (req) => o.broker.train.checkpointKey(session(req), req.params.job),
  );

  // The receipt's digest is of its bytes exactly as sent, so this route reads the body unparsed.
  await app.register(async (raw) => {
    raw.removeContentTypeParser('application/json');
    raw.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) =>
      done(null, body),
    );
    raw.post<{ Params: { job: string }; Body: Buffer }>(
      '/cloister/v1/train/:job/receipt',
      {
        preValidation: requireJson,
        bodyLimit: RECEIPT_MAX_BYTES,
        schema: {
          summary:
            'Append a training receipt (DSSE envelope of an in-toto Statement) to the transparency log',
          params: jobParams,
        },
        config: doc({
          ok: { 200: '{logIndex, sha256}' },
          errors: [
            ...KBS_JSON_ERRORS,
            ...SESSION_ERRORS,
            'bad-receipt',
            'recipient-denied',
            'receipt-exists',
          ],
        }),
      },
      async (req) =>
        o.broker.train.appendReceipt(
          session(req),
          req.params.job,
          new Uint8Array(req.body.buffer, req.body.byteOffset, req.body.byteLength),
        ),
    );
  });

  // Probes must stay cheap and answer while a client is being throttled.
  app.get(
    '/healthz',
    {
      schema: { summary: 'Liveness (never rate-limited)' },
      config: { rateLimit: false, ...doc({ ok: { 200: '{status: "ok"}' } }) },
    },
    async () => ({ status: 'ok' }),
  );
  // Readiness, unlike liveness, follows the database: a load balancer stops sending requests to a
  // broker that cannot reach it, and a restart would not help.
  const ready = sharedCheck(o.ready);
  app.get(
    '/readyz',
    {
      schema: { summary: "Readiness: the store's database answers (never rate-limited)" },
      config: { rateLimit: false, ...doc({ ok: { 200: '{status: "ready"}' }, errors: ['not-ready'] }) },
    },
    async (_req, reply) => {
      try {
        await ready();
      } catch (e) {
        return refuse(
          reply.header('retry-after', RETRY_AFTER_SECONDS),
          'not-ready',
          `the store's database does not answer: ${(e as Error).message}`,
        );
      }
      return { status: 'ready' };
    },
  );
  app.get(
    '/metrics',
    {
      schema: { summary: 'Prometheus metrics' },
      config: doc({ ok: { 200: 'text exposition format' } }),
    },
    async (_req, reply) => reply.type('text/plain; version=0.0.4').send(o.metrics.render()),
  );
  // Public keys, unauthenticated: they are what a relying party checks the broker's word against.
  // Not under /kbs/v0, the CoCo protocol's namespace (a later protocol version may claim any name
  // there); a well-known URI (RFC 8615) is where a client finds metadata of a host without a map.
  app.get(
    '/.well-known/cloister-kbs',
    {
      schema: { summary: 'Public keys: EAR verification key(s) (JWKS) and the log verifier key' },
      config: doc({ ok: { 200: '{ear: {keys}, log: {origin, verifierKey}}' } }),
    },
    async () => o.publicKeys,
  );
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  await o.admin.register(app);
  return app;
}
