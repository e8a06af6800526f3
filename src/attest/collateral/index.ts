/**
 * Collateral sources (browser-safe part). Verifiers ask a `CollateralSource` for each item they need
 * (Intel PCS TCB info and CRLs, AMD KDS certificates, NVIDIA RIMs and OCSP) with both its vendor URL and
 * the file names it has in an offline folder; the source decides where it comes from:
 *
 *   httpSource()      the vendor services, over the global fetch
 *   chainSources()    the first source that has the item
 *   offlineSource     nothing: a verifier that needs collateral fails with its own clear error
 *
 * Node-only sources (a folder, an on-disk cache) are in ./node.ts. A source never judges freshness:
 * each vendor verifier reads the issue and expiry dates inside the collateral and compares them with
 * `options.at`, so a stale cache or folder gives a clear verification error, never silent acceptance.
 */
import {
  AttestationError,
  type CollateralItem,
  type CollateralRequest,
  type CollateralSource,
} from '../common/types.js';

/** A source with no collateral at all: offline mode with nothing to serve. */
export const offlineSource: CollateralSource = {
  get: async () => undefined,
};

export interface HttpSourceOptions {
  /** Defaults to the global fetch. */
  fetch?: typeof fetch;
  /** Per request; default 10 s. */
  timeoutMs?: number;
  /** Largest body accepted; default 32 MiB (a CRL or RIM is far smaller). */
  maxBytes?: number;
}

function unavailable(req: CollateralRequest, why: string, cause?: unknown): AttestationError {
  return new AttestationError(
    'verify',
    'collateral-unavailable',
    `cannot fetch collateral ${req.url}: ${why} (work offline with --collateral DIR holding ${req.files.join(' or ')})`,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * Fetches `req.url`. 404 and 410 mean "the vendor has no such item" and give undefined; any other
 * failure (network, timeout, other non-2xx status, oversized body) is an AttestationError.
 */
export function httpSource(options: HttpSourceOptions = {}): CollateralSource {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const maxBytes = options.maxBytes ?? 32 * 1024 * 1024;
  return {
    async get(req: CollateralRequest): Promise<CollateralItem | undefined> {
      const doFetch = options.fetch ?? globalThis.fetch;
      let res: Response;
      try {
        res = await doFetch(req.url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'follow' });
      } catch (e) {
        throw unavailable(
          req,
          (e as Error).name === 'TimeoutError' ? `no answer in ${timeoutMs} ms` : String(e),
          e,
        );
      }
      if (res.status === 404 || res.status === 410) return undefined;
      if (!res.ok) throw unavailable(req, `HTTP ${res.status} ${res.statusText}`.trim());
      const length = Number(res.headers.get('content-length') ?? '0');
      if (length > maxBytes) throw unavailable(req, `body of ${length} bytes exceeds ${maxBytes}`);
      const body = new Uint8Array(await res.arrayBuffer());
      if (body.length > maxBytes) throw unavailable(req, `body of ${body.length} bytes exceeds ${maxBytes}`);
      const headers: Record<string, string> = {};
      res.headers.forEach((value, name) => {
        headers[name.toLowerCase()] = value;
      });
      return { body, headers };
    },
  };
}

/**
 * The first source that has the item. A source that fails is skipped; when no later source has the
 * item either, the first failure is thrown (so "offline folder lacks it, network down" says why).
 */
export function chainSources(...sources: CollateralSource[]): CollateralSource {
  return {
    async get(req: CollateralRequest): Promise<CollateralItem | undefined> {
      let firstError: unknown;
      for (const s of sources) {
        try {
          const item = await s.get(req);
          if (item !== undefined) return item;
        } catch (e) {
          firstError ??= e;
        }
      }
      if (firstError !== undefined) throw firstError;
      return undefined;
    },
  };
}

export interface MemoryCacheOptions {
  /** How long an item is served from memory before `inner` is asked again; default one minute. */
  maxAgeMs?: number;
  /** Most items kept; the oldest are forgotten first. Default 1024. */
  maxEntries?: number;
  /** Clock, for tests. */
  now?: () => number;
}

/**
 * Keeps what `inner` found in memory for `maxAgeMs`, so a service verifying evidence all day reads a
 * folder or an on-disk cache once a minute instead of once per verification, and hands the verifiers
 * the same buffers again (which their own caches recognise). Concurrent requests for one item share
 * one lookup. Misses and failures are not kept: the next request asks `inner` again. Freshness is
 * still judged by the verifier from the dates inside the collateral.
 */
export function memoryCache(inner: CollateralSource, options: MemoryCacheOptions = {}): CollateralSource {
  const maxAgeMs = options.maxAgeMs ?? 60_000;
  const maxEntries = options.maxEntries ?? 1024;
  const now = options.now ?? Date.now;
  const entries = new Map<string, { at: number; item: Promise<CollateralItem | undefined> }>();
  return {
    get(req: CollateralRequest): Promise<CollateralItem | undefined> {
      const key = JSON.stringify([req.url, req.files]);
      const t = now();
      const hit = entries.get(key);
      if (hit && t - hit.at < maxAgeMs) return hit.item;
      const item = inner.get(req);
      const entry = { at: t, item };
      entries.delete(key);
      entries.set(key, entry);
      while (entries.size > maxEntries) entries.delete(entries.keys().next().value as string);
      const forget = () => {
        if (entries.get(key) === entry) entries.delete(key);
      };
      item.then((found) => found ?? forget(), forget);
      return item;
    },
  };
}
