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
 * Errors are RFC 7807 problem documents. A streamed body that fails after its first bytes were sent
 * (a tampered chunk in /unseal) cannot change its status any more: the connection is then cut before
 * the final chunk, so clients see an incomplete response rather than a clean end.
 */
import { once } from 'node:events';
import { chmod, lstat, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { bestChunkCipher } from '../seal/aead-native.js';
import { beginSeal, openStream, sealStream } from '../seal/container.js';
import { headerLengthOf, parseHeader, SealFormatError } from '../seal/format.js';
import type { Recipient } from '../seal/keys.js';
import { concatBytes, fromBase64, fromHex, toBase64Url, utf8 } from '../util/bytes.js';
import { RESOURCE_PATH } from '../wire/kbs.js';
import { problem } from '../wire/problem.js';
import type { CollectionError, CpuAttester, CpuKind } from './evidence/types.js';
import { pullFrom } from './files.js';
import { KbsClientError } from './kbs-client.js';
import { AgentError, KekCache, type ResourceSource } from './keys.js';

export interface AgentApiOptions {
  kbs: ResourceSource;
  tee: { kind: CpuKind; attester: CpuAttester };
  /** One line per request and per refusal (never secrets). */
  log?: (line: string) => void;
}

class HttpProblem extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

function toProblem(e: unknown): HttpProblem {
  if (e instanceof HttpProblem) return e;
  if (e instanceof KbsClientError) {
    if (e.status === undefined) return new HttpProblem(502, 'broker-unreachable', e.message);
    if (e.status === 404) return new HttpProblem(404, 'resource-not-found', e.message);
    if (e.status === 401 || e.status === 403) return new HttpProblem(403, 'refused-by-broker', e.message);
    return new HttpProblem(502, 'broker-error', e.message);
  }
  if (e instanceof SealFormatError) return new HttpProblem(400, `sealed-${e.code}`, e.message);
  if (e instanceof AgentError) {
    const status = e.code === 'bad-uri' || e.code === 'no-kbs-recipient' ? 400 : 502;
    return new HttpProblem(status, e.code, e.message);
  }
  if ((e as Error)?.name === 'CollectionError')
    return new HttpProblem(500, `evidence-${(e as CollectionError).code}`, (e as Error).message);
  return new HttpProblem(500, 'internal', (e as Error)?.message ?? String(e));
}

function sendProblem(res: ServerResponse, p: HttpProblem): void {
  const body = JSON.stringify(problem(p.status, p.type, p.message));
  res.writeHead(p.status, {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

function send(
  res: ServerResponse,
  type: string,
  body: Uint8Array | string,
  headers: Record<string, string> = {},
): void {
  const b = typeof body === 'string' ? utf8.encode(body) : body;
  res.writeHead(200, {
    'content-type': type,
    'content-length': b.length,
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(b);
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

/** Writes a web stream to the response; the status is sent with the first bytes (or at the end). */
async function stream(
  res: ServerResponse,
  body: ReadableStream<Uint8Array>,
  headers: Record<string, string>,
): Promise<void> {
  const reader = body.getReader();
  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'cache-control': 'no-store',
      ...headers,
    });
  };
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      start();
      if (!res.write(value)) {
        // A client that goes away never drains: stop reading (and decrypting) instead of waiting forever.
        await Promise.race([once(res, 'drain'), once(res, 'close')]);
        if (res.destroyed) {
          await reader.cancel();
          return;
        }
      }
    }
    start();
    res.end();
  } catch (e) {
    if (!started) throw e;
    // Too late for a status: the caller cuts the connection, so the client cannot mistake this for a
    // complete body.
    throw e;
  }
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
      throw new HttpProblem(
        400,
        'bad-recipient',
        `to=${spec}: an HPKE recipient is hpke:<base64url X25519 public key>`,
      );
    return { type: 'hpke', publicKey };
  }
  throw new HttpProblem(
    400,
    'bad-recipient',
    `to=${spec}: a recipient is kbs:///<repo>/<type>/<tag> or hpke:<base64url key>`,
  );
}

export class AgentApi {
  readonly keys: KekCache;
  constructor(private readonly o: AgentApiOptions) {
    this.keys = new KekCache(o.kbs);
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://agent');
    const route = `${req.method} ${url.pathname}`;
    try {
      await this.route(req, res, url);
      this.o.log?.(`${route} → ${res.statusCode}`);
    } catch (e) {
      const p = toProblem(e);
      if (res.headersSent) {
        this.o.log?.(`${route} → stream cut after status 200: ${p.type}: ${p.message}`);
        res.destroy();
        return;
      }
      this.o.log?.(`${route} → ${p.status} ${p.type}: ${p.message}`);
      // Read (and drop) the rest of the body first: clients that send the whole body before reading
      // the answer (Python's http.client) would otherwise get a broken pipe instead of the problem.
      await drain(req);
      sendProblem(res, p);
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const want = (m: string) => {
      if (method !== m) throw new HttpProblem(405, 'method-not-allowed', `${path} takes ${m}, not ${method}`);
    };
    if (path === '/healthz') {
      want('GET');
      return send(
        res,
        'application/json',
        JSON.stringify({ status: 'ok', tee: this.o.tee.kind, insecure: this.o.tee.attester.insecure }),
      );
    }
    if (path === '/token') {
      want('GET');
      return send(res, 'application/jwt', await this.o.kbs.token());
    }
    if (path.startsWith('/resource/')) {
      want('GET');
      let rp: string;
      try {
        rp = decodeURIComponent(path.slice('/resource/'.length));
      } catch {
        throw new HttpProblem(400, 'bad-resource-path', 'the resource path is not valid percent-encoding');
      }
      if (!RESOURCE_PATH.test(rp))
        throw new HttpProblem(400, 'bad-resource-path', `"${rp}" is not <repository>/<type>/<tag>`);
      return send(res, 'application/octet-stream', await this.o.kbs.getResource(rp));
    }
    if (path === '/evidence') {
      want('GET');
      const hex = url.searchParams.get('report_data') ?? '';
      if (!/^([0-9a-fA-F]{2}){0,64}$/.test(hex))
        throw new HttpProblem(
          400,
          'bad-report-data',
          'report_data must be hex, at most 64 bytes (128 digits)',
        );
      const e = await this.o.tee.attester.collect(fromHex(hex));
      if (url.searchParams.get('format') === 'json') {
        return send(
          res,
          'application/json',
          JSON.stringify({
            kind: e.kind,
            evidence: toBase64Url(e.evidence),
            ...(e.auxblob && e.auxblob.length > 0 ? { auxblob: toBase64Url(e.auxblob) } : {}),
          }),
        );
      }
      return send(res, 'application/octet-stream', e.evidence, { 'x-cloister-tee': e.kind });
    }
    if (path === '/unseal') {
      want('POST');
      const { header, body } = await sealedRequest(req);
      const key = await this.keys.forHeader(header, 'the request body');
      return stream(res, body.pipeThrough(openStream(key, bestChunkCipher())), {
        'x-cloister-name': encodeURIComponent(header.name),
        ...(header.contentType ? { 'x-cloister-content-type': encodeURIComponent(header.contentType) } : {}),
      });
    }
    if (path === '/seal') {
      want('POST');
      const to = url.searchParams.getAll('to');
      if (to.length === 0)
        throw new HttpProblem(
          400,
          'no-recipient',
          'give at least one recipient: /seal?to=kbs:///<repo>/<type>/<tag>',
        );
      const recipients = await Promise.all(to.map((s) => recipientFor(s, this.keys)));
      const length = req.headers['content-length'];
      const ctx = await beginSeal({
        recipients,
        name: url.searchParams.get('name') ?? '',
        contentType: url.searchParams.get('content_type') ?? '',
        ...(length !== undefined ? { plaintextLength: Number(length) } : {}),
        cipher: bestChunkCipher(),
      });
      return stream(res, pullFrom(req).pipeThrough(sealStream(ctx)), {});
    }
    throw new HttpProblem(404, 'not-found', `no route ${method} ${path} (see docs/agent-api.md)`);
  }
}

/** Refuses to take over a socket another process is listening on; removes a stale one. */
async function clearStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket())
    throw new AgentError('socket-path', `${path} exists and is not a socket; choose another --socket`);
  const live = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new AgentError('socket-in-use', `another process is listening on ${path}`);
  await unlink(path);
}

/** Serves the API on a Unix socket, mode 0600. `close()` stops it and removes the socket. */
export async function serveAgentApi(
  socketPath: string,
  o: AgentApiOptions,
): Promise<{ server: Server; api: AgentApi; close(): Promise<void> }> {
  await clearStaleSocket(socketPath);
  const api = new AgentApi(o);
  const server = createServer((req, res) => void api.handle(req, res));
  // Created 0600 from the start (umask), so there is no window in which others could connect.
  const oldMask = process.umask(0o177);
  try {
    server.listen(socketPath);
    await once(server, 'listening');
  } finally {
    process.umask(oldMask);
  }
  await chmod(socketPath, 0o600);
  return {
    server,
    api,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await unlink(socketPath).catch(() => {});
      await api.keys.clear();
    },
  };
}
