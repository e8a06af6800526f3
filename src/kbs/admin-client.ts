/**
 * A client for the broker's admin API (`/admin/v1/…`), shared by `cloister kbs …` and `cloister demo`.
 * It loads nothing but fetch, so that the CLI can import it at start without slowing `--help`.
 */
import type { Problem } from '../wire/index.js';

/** unreachable: no answer at all; refused: an error status (its problem's `type` and `detail` kept). */
export type AdminClientErrorCode = 'unreachable' | 'refused';

export class AdminClientError extends Error {
  override name = 'AdminClientError';
  constructor(
    message: string,
    readonly code: AdminClientErrorCode,
    /** The problem the broker answered with (refused only). */
    readonly problem?: { status: number; type?: string; detail?: string },
  ) {
    super(message);
  }
}

/** A request body: JSON, or bytes sent as application/octet-stream (a resource's value). */
export type AdminBody = { json: unknown } | { bytes: Uint8Array };

/**
 * A fetch that got no answer, in one line. fetch says only "fetch failed"; the reason (ECONNREFUSED, a
 * DNS failure) is its cause. An untrusted certificate comes from clientFetch already in words, without
 * a cause, and starting with the server's origin, which is not said twice.
 */
function unreachable(url: string, e: unknown): AdminClientError {
  const cause = (e as { cause?: unknown }).cause;
  const reason = cause instanceof Error ? cause.message : (e as Error).message;
  const origin = `${new URL(url).origin}: `;
  return new AdminClientError(
    `cannot reach the key broker at ${url}: ${reason.startsWith(origin) ? reason.slice(origin.length) : reason}`,
    'unreachable',
  );
}

export class AdminClient {
  /**
   * `url`: the broker's base URL; `token`: an admin token, sent as a bearer token on every call;
   * `fetchFn`: how to reach it (the CLI's trusts `--cacert`); default the global fetch.
   */
  constructor(
    readonly url: string,
    private readonly token: string,
    private readonly fetchFn: typeof fetch = globalThis.fetch.bind(globalThis),
  ) {}

  /** One admin call; resolves with the answer's JSON (undefined for 204 No Content). */
  async call(method: string, path: string, body?: AdminBody): Promise<unknown> {
    const res = await this.send(method, path, body);
    if (res.status === 204) return undefined;
    const text = await res.text();
    return text ? JSON.parse(text) : undefined;
  }

  /** A GET whose answer is text, not JSON (the transparency log bundle). */
  async text(path: string): Promise<string> {
    return (await this.send('GET', path)).text();
  }

  /** A GET whose answer is read as it arrives (a log bundle of any length); refusals throw before. */
  async stream(path: string): Promise<ReadableStream<Uint8Array>> {
    const res = await this.send('GET', path);
    if (!res.body) throw new AdminClientError(`GET ${path}: the broker sent no body`, 'refused');
    return res.body;
  }

  private async send(method: string, path: string, body?: AdminBody): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    let payload: BodyInit | undefined;
    if (body && 'json' in body) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body.json);
    } else if (body) {
      headers['content-type'] = 'application/octet-stream';
      // A copy whose buffer is a plain ArrayBuffer, as BodyInit wants.
      payload = new Uint8Array(body.bytes);
    }
    let res: Response;
    try {
      res = await this.fetchFn(new URL(path, this.url), {
        method,
        headers,
        ...(payload !== undefined ? { body: payload } : {}),
      });
    } catch (e) {
      throw unreachable(this.url, e);
    }
    if (res.ok) return res;
    const text = await res.text();
    const p = text ? (JSON.parse(text) as Partial<Problem>) : undefined;
    throw new AdminClientError(
      `${method} ${path}: ${res.status} ${String(p?.detail ?? res.statusText)}`,
      'refused',
      {
        status: res.status,
        ...(typeof p?.type === 'string' ? { type: p.type } : {}),
        ...(typeof p?.detail === 'string' ? { detail: p.detail } : {}),
      },
    );
  }
}
export { ADMIN_ROLES } from './tenancy.js';

/** What `GET /.well-known/cloister-kbs` answers (server.ts PublicKeys), as a client reads it. */
export interface BrokerPublicKeys {
  ear: { keys: (JsonWebKey & { kid?: string })[] };
  log: { origin: string; verifierKey: string };
}

/** The broker's public keys; unauthenticated. A wrong answer is refused here, not used. */
export async function fetchPublicKeys(
  url: string,
  fetchFn: typeof fetch = globalThis.fetch.bind(globalThis),
): Promise<BrokerPublicKeys> {
  const at = new URL('/.well-known/cloister-kbs', url);
  let res: Response;
  try {
    res = await fetchFn(at);
  } catch (e) {
    throw unreachable(url, e);
  }
  if (!res.ok)
    throw new AdminClientError(`GET ${at.pathname}: ${res.status} ${res.statusText}`, 'refused', {
      status: res.status,
    });
  const v = (await res.json().catch(() => undefined)) as Partial<BrokerPublicKeys> | undefined;
  if (
    !Array.isArray(v?.ear?.keys) ||
    typeof v.log?.verifierKey !== 'string' ||
    typeof v.log.origin !== 'string'
  )
    throw new AdminClientError(`${at}: not a Cloister key broker's public keys`, 'refused');
  return v as BrokerPublicKeys;
}
