/**
 * The training API (Node-only): HTTP/1.1 on a Unix socket (mode 0600) through which a bring-your-own
 * trainer — PyTorch, JAX, anything that speaks HTTP — reads its job, saves and resumes checkpoints,
 * reports metrics and says it is done. The runner passes the socket's path in CLOISTER_TRAIN_SOCKET;
 * python/cloister_train.py is a standard-library client. docs/agent-api.md#training-api.
 *
 *   GET  /train/v1/job               JobInfo as JSON
 *   GET  /train/v1/checkpoint        200 the latest state (cloister-checkpoint-number/-step headers) | 204
 *   POST /train/v1/checkpoint?step=N state bytes → 201 {number, sha256}
 *   POST /train/v1/metrics           {step, …finite scalars} → 204
 *   POST /train/v1/finish            {metrics?} → 204; afterwards checkpoints and metrics are refused (409)
 *
 * Checkpoint state is plaintext model and optimizer state: it is read into memory and handed to the
 * session, which seals it before anything is written, so it never touches a disk in the clear. The
 * session is called one save at a time, in arrival order, so its chain and the broker's
 * compare-and-set never see two saves race. Same stack as the agent's API (src/tee/api.ts): Fastify
 * from src/http, one code → status table (TRAIN_API_STATUS), RFC 7807 problem documents.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify';
import {
  createHttp,
  frameworkRefusal,
  listenOnUnixSocket,
  rawBodies,
  readBody,
  type SocketSetupCode,
  type StatusTable,
} from '../http/index.js';
import { problem } from '../wire/index.js';
import type { TrainingSession } from './session.js';

export interface TrainingApiOptions {
  socketPath: string;
  session: TrainingSession;
  /** One line per request and per refusal: route, status, reason. Never bodies or metric values. */
  log?: (line: string) => void;
  /** Largest checkpoint state accepted, in bytes (default 4 GiB, Node 20's largest buffer). */
  maxCheckpointBytes?: number;
}

/** Every refusal of the training API; each names a row of TRAIN_API_STATUS. */
export type TrainApiCode =
  | 'bad-request'
  | 'bad-step'
  | 'bad-metrics'
  | 'too-large'
  | 'conflict'
  | 'finished'
  | 'not-found'
  | 'method-not-allowed'
  | 'session-failed'
  | 'internal';

/** The training API's one code → status table. */
export const TRAIN_API_STATUS = {
  'bad-request': 400,
  'bad-step': 400,
  'bad-metrics': 400,
  'too-large': 413,
  conflict: 409,
  finished: 409,
  'not-found': 404,
  'method-not-allowed': 405,
  'session-failed': 500,
  internal: 500,
} as const satisfies StatusTable<TrainApiCode>;

/**
 * A refusal of the training API. `type` names the problem document's type: the code, or the
 * session's own code where it says more (`checkpoint-rollback` for a `conflict`, `checkpoint-chain`
 * for a `session-failed`).
 */
export class TrainApiError extends Error {
  override name = 'TrainApiError';
  readonly type: string;
  constructor(
    readonly code: TrainApiCode,
    message: string,
    type?: string,
  ) {
    super(message);
    this.type = type ?? code;
  }
}

/** Setting up the socket failed: its folder is missing or not one, or another server holds it. */
export type TrainApiSetupCode = SocketSetupCode;

export class TrainApiSetupError extends Error {
  override name = 'TrainApiSetupError';
  constructor(
    readonly code: TrainApiSetupCode,
    message: string,
  ) {
    super(message);
  }
}

/** Default and ceiling of `maxCheckpointBytes`: the largest Uint8Array Node 20 makes. */
const MAX_CHECKPOINT_BYTES = 4 * 1024 ** 3;
/** Metrics and finish bodies are a few scalars; a megabyte is generous. */
const MAX_JSON_BYTES = 1024 * 1024;
/** Metric names as experiment trackers write them (`loss`, `train/loss`, `eval.acc_top1`). */
const METRIC_NAME = /^[A-Za-z_][A-Za-z0-9_./-]{0,127}$/;
/** Session codes that mean "this save does not continue the chain": the trainer's fault, 409. */
const CONFLICT_CODES = new Set(['checkpoint-conflict', 'checkpoint-rollback']);

/** A session's failure as a refusal; its code (when it is a plain slug) becomes the problem's type. */
function sessionError(e: unknown): TrainApiError {
  if (e instanceof TrainApiError) return e;
  const code = (e as { code?: unknown })?.code;
  const message = (e as Error)?.message ?? String(e);
  const slug = typeof code === 'string' && /^[a-z][a-z0-9-]{0,63}$/.test(code) ? code : undefined;
  if (slug && CONFLICT_CODES.has(slug)) return new TrainApiError('conflict', message, slug);
  return new TrainApiError('session-failed', message, slug);
}

async function fromSession<T>(call: () => Promise<T> | T): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw sessionError(e);
  }
}

function toApiError(e: unknown): TrainApiError {
  if (e instanceof TrainApiError) return e;
  const refusal = frameworkRefusal(e, 0);
  if (refusal) return new TrainApiError('bad-request', refusal.detail);
  return new TrainApiError('internal', (e as Error)?.message ?? String(e));
}

/**
 * The request body whole, in memory. With a Content-Length (Python's http.client and curl send one)
 * the buffer is made once at its final size, so a state of gigabytes is not held twice while joining.
 */
async function readState(request: FastifyRequest, limit: number): Promise<Uint8Array> {
  const tooLarge = () =>
    new TrainApiError('too-large', `the checkpoint state exceeds ${limit} bytes`, 'too-large');
  const declared = request.headers['content-length'];
  if (declared === undefined) return readBody(request, limit, tooLarge);
  const length = Number(declared);
  if (length > limit) throw tooLarge();
  const out = new Uint8Array(length);
  let at = 0;
  for await (const chunk of request.raw as AsyncIterable<Buffer>) {
    // Node's parser never passes more than Content-Length; the check keeps `set` in bounds regardless.
    if (at + chunk.length > length) throw new TrainApiError('bad-request', 'body longer than Content-Length');
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== length)
    throw new TrainApiError('bad-request', `body ended after ${at} of ${length} bytes (Content-Length)`);
  return out;
}

/** A JSON body: an object, or `{}` for an empty body where `emptyOk`. */
async function readJsonObject(request: FastifyRequest, emptyOk: boolean): Promise<Record<string, unknown>> {
  const bytes = await readBody(
    request,
    MAX_JSON_BYTES,
    () => new TrainApiError('too-large', `a JSON body is at most ${MAX_JSON_BYTES} bytes`),
  );
  if (bytes.length === 0 && emptyOk) return {};
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new TrainApiError('bad-request', `the body is not JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new TrainApiError('bad-request', 'the body must be a JSON object');
  return value as Record<string, unknown>;
}

/** Checks a metrics object: names metric-like, values finite numbers; `where` prefixes field names. */
function scalars(o: Record<string, unknown>, where: string): Record<string, number> {
  const out: [string, number][] = [];
  for (const [k, v] of Object.entries(o)) {
    if (!METRIC_NAME.test(k))
      throw new TrainApiError(
        'bad-metrics',
        `${where}${JSON.stringify(k).slice(0, 140)}: a metric name is letters, digits, _ . / - (at most 128, not starting with a digit or punctuation other than _)`,
      );
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new TrainApiError(
        'bad-metrics',
        `${where}${k}: must be a finite number, not ${JSON.stringify(v)}`,
      );
    out.push([k, v]);
  }
  // fromEntries defines own properties, so a field named __proto__ stays a field.
  return Object.fromEntries(out);
}

function isStep(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Sends bytes with their length and an exact media type (a string body would get a charset). */
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
    .headers({ 'content-type': type, 'cache-control': 'no-store', ...headers })
    .send(b);
}

/** Reads a request to its end, dropping the bytes (a refused upload may be half read). */
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

function urlOf(request: FastifyRequest): URL {
  return new URL(request.url, 'http://train');
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;
type Method = (typeof METHODS)[number];

/** Adds the training API's routes and its error edge to `app`. */
function register(app: FastifyInstance, o: TrainingApiOptions): void {
  const { session } = o;
  const log = o.log ?? (() => {});
  const maxState = Math.min(o.maxCheckpointBytes ?? MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_BYTES);
  let finished = false;
  // Saves and the finish run one after another: the chain and the broker's compare-and-set expect it.
  let queue: Promise<unknown> = Promise.resolve();
  const inTurn = <T>(work: () => Promise<T>): Promise<T> => {
    const run = queue.then(work, work);
    queue = run.catch(() => {});
    return run;
  };
  const notFinished = (what: string) => {
    if (finished) throw new TrainApiError('finished', `the trainer already called finish; no more ${what}`);
  };

  rawBodies(app);
  app.addHook('onResponse', async (request, reply) => {
    if (reply.statusCode < 400) log(`${request.method} ${urlOf(request).pathname} → ${reply.statusCode}`);
  });
  app.setErrorHandler(async (e, request, reply) => {
    const p = toApiError(e);
    const status = TRAIN_API_STATUS[p.code];
    log(`${request.method} ${urlOf(request).pathname} → ${status} ${p.type}: ${p.message}`);
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
    throw new TrainApiError(
      'not-found',
      `no route ${request.method} ${urlOf(request).pathname} (see docs/agent-api.md#training-api)`,
    );
  });

  /** The handlers of `url` by method; any other method is refused with 405. */
  const route = (url: string, handlers: Partial<Record<'GET' | 'POST', RouteHandlerMethod>>) => {
    const taken = Object.keys(handlers) as ('GET' | 'POST')[];
    for (const method of taken)
      app.route({ method, url, handler: handlers[method]!, exposeHeadRoute: false });
    app.route({
      method: METHODS.filter((m) => !(taken as Method[]).includes(m)),
      url,
      handler: (request) => {
        throw new TrainApiError(
          'method-not-allowed',
          `${urlOf(request).pathname} takes ${taken.join(' or ')}, not ${request.method}`,
        );
      },
    });
  };

  route('/train/v1/job', {
    GET: (_request, reply) => sendBytes(reply, 200, 'application/json', JSON.stringify(session.info)),
  });

  const loadCheckpoint: RouteHandlerMethod = async (_request, reply) => {
    const latest = await fromSession(() => session.latest());
    if (!latest) return reply.code(204).header('cache-control', 'no-store').send();
    return sendBytes(reply, 200, 'application/octet-stream', latest.state, {
      'cloister-checkpoint-number': String(latest.number),
      'cloister-checkpoint-step': String(latest.step),
    });
  };

  const saveCheckpoint: RouteHandlerMethod = async (request, reply) => {
    const raw = urlOf(request).searchParams.get('step');
    if (raw === null)
      throw new TrainApiError('bad-step', 'step: give the step as /train/v1/checkpoint?step=N');
    if (!/^\d{1,15}$/.test(raw))
      throw new TrainApiError(
        'bad-step',
        `step: must be an integer ≥ 0, not ${JSON.stringify(raw.slice(0, 32))}`,
      );
    const step = Number(raw);
    notFinished('checkpoints');
    const state = await readState(request, maxState);
    if (state.length === 0) throw new TrainApiError('bad-request', 'the checkpoint state is empty');
    // Finish may have come while the state was uploading.
    notFinished('checkpoints');
    const saved = await inTurn(() => fromSession(() => session.save(state, step)));
    return sendBytes(
      reply,
      201,
      'application/json',
      JSON.stringify({ number: saved.number, sha256: saved.sha256 }),
    );
  };
  route('/train/v1/checkpoint', { GET: loadCheckpoint, POST: saveCheckpoint });

  route('/train/v1/metrics', {
    POST: async (request, reply) => {
      const body = await readJsonObject(request, false);
      if (!('step' in body)) throw new TrainApiError('bad-metrics', 'step: required (an integer ≥ 0)');
      if (!isStep(body.step))
        throw new TrainApiError(
          'bad-metrics',
          `step: must be an integer ≥ 0, not ${JSON.stringify(body.step)}`,
        );
      const m = scalars(body, '');
      notFinished('metrics');
      await fromSession(() => session.metrics(m));
      return reply.code(204).send();
    },
  });

  route('/train/v1/finish', {
    POST: async (request, reply) => {
      const body = await readJsonObject(request, true);
      for (const k of Object.keys(body))
        if (k !== 'metrics')
          throw new TrainApiError(
            'bad-request',
            `${JSON.stringify(k).slice(0, 140)}: unknown field (finish takes {metrics?})`,
          );
      let m: Record<string, number> | undefined;
      if (body.metrics !== undefined) {
        const given = body.metrics;
        if (typeof given !== 'object' || given === null || Array.isArray(given))
          throw new TrainApiError('bad-metrics', 'metrics: must be an object of finite numbers');
        m = scalars(given as Record<string, unknown>, 'metrics.');
      }
      notFinished('finish');
      finished = true;
      // After every save that arrived before it, so the last checkpoint is in the chain first.
      await inTurn(() => fromSession(() => (m ? session.finish(m) : session.finish())));
      return reply.code(204).send();
    },
  });
}

/** Serves the training API for one session on a Unix socket, mode 0600. `close()` stops it and removes the socket. */
export async function serveTrainingApi(o: TrainingApiOptions): Promise<{ close(): Promise<void> }> {
  // Bodies are read by the handlers under their own limits (rawBodies). A state of gigabytes takes a
  // while to arrive, so the whole request gets five minutes; the session's sealing is not counted.
  const app = createHttp({
    bodyLimit: Number.MAX_SAFE_INTEGER,
    timeouts: { requestMs: 300_000, headersMs: 60_000, keepAliveMs: 5_000 },
  });
  register(app, o);
  return listenOnUnixSocket(app, o.socketPath, {
    label: `the training socket ${o.socketPath}`,
    refuse: (code, message) => new TrainApiSetupError(code, message),
  });
}
