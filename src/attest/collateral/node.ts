/**
 * Node-only collateral sources: a folder of files (offline verification, test vectors) and an on-disk
 * cache in front of another source (usually httpSource) that keeps working when the network is gone.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  AttestationError,
  type CollateralItem,
  type CollateralRequest,
  type CollateralSource,
} from '../common/types.js';
import { chainSources } from './index.js';

const HEADERS_SUFFIX = '.headers.json';

function isMissing(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR';
}

async function readOptional(file: string): Promise<Uint8Array | undefined> {
  try {
    return new Uint8Array(await readFile(file));
  } catch (e) {
    if (isMissing(e)) return undefined;
    throw e;
  }
}

function parseHeaders(text: string, where: string): Record<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new AttestationError(
      'verify',
      'bad-collateral-headers',
      `${where} is not JSON: ${(e as Error).message}`,
    );
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new AttestationError(
      'verify',
      'bad-collateral-headers',
      `${where} must be a JSON object of header: value`,
    );
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(json)) {
    if (typeof v !== 'string') {
      throw new AttestationError(
        'verify',
        'bad-collateral-headers',
        `${where}: header ${k} must be a string`,
      );
    }
    out[k.toLowerCase()] = v;
  }
  return out;
}

/**
 * Serves the first file among `req.files` that exists in `dir`, with the HTTP headers from
 * `<file>.headers.json` when that sidecar exists (Intel PCS puts issuer chains in headers). Names that
 * would leave `dir` (absolute, or with `..`) are ignored.
 */
export function directorySource(dir: string): CollateralSource {
  const root = path.resolve(dir);
  return {
    async get(req: CollateralRequest): Promise<CollateralItem | undefined> {
      for (const name of req.files) {
        const file = path.resolve(root, name);
        if (path.isAbsolute(name) || !file.startsWith(root + path.sep)) continue;
        const body = await readOptional(file);
        if (body === undefined) continue;
        const sidecar = await readOptional(file + HEADERS_SUFFIX);
        const headers = sidecar ? parseHeaders(new TextDecoder().decode(sidecar), file + HEADERS_SUFFIX) : {};
        return { body, headers };
      }
      return undefined;
    },
  };
}

/** Several folders searched in order: the collateral of a sample folder, then shared roots, … */
export function folderCollateral(...dirs: string[]): CollateralSource {
  return chainSources(...dirs.map(directorySource));
}

export interface CacheOptions {
  /** Only the cache: the inner source is never asked (no network at all). */
  offline?: boolean;
  /** Entries younger than this are served without asking the inner source; default one hour. */
  maxAgeMs?: number;
  /** Clock, for tests. */
  now?: () => Date;
}

interface CacheMeta {
  url: string;
  headers: Record<string, string>;
  fetchedAt: string;
}

/**
 * An on-disk cache keyed by SHA-256 of the URL: `<hash>.body` holds the bytes and `<hash>.json` the
 * URL, headers and fetch time. Fresh entries are served directly; older ones are refreshed from `inner`
 * and served as they are when `inner` fails (offline). With `offline: true` only the cache is read.
 * Whether the collateral itself is still valid is judged by the verifier, from the dates inside it.
 */
export function cachedSource(
  inner: CollateralSource,
  cacheDir: string,
  options: CacheOptions = {},
): CollateralSource {
  const maxAgeMs = options.maxAgeMs ?? 3600_000;
  const now = options.now ?? (() => new Date());

  const paths = (url: string) => {
    const key = createHash('sha256').update(url).digest('hex');
    return { body: path.join(cacheDir, `${key}.body`), meta: path.join(cacheDir, `${key}.json`) };
  };

  async function load(url: string): Promise<{ item: CollateralItem; fetchedAt: Date } | undefined> {
    const p = paths(url);
    const metaBytes = await readOptional(p.meta);
    const body = await readOptional(p.body);
    if (metaBytes === undefined || body === undefined) return undefined;
    let meta: CacheMeta;
    try {
      meta = JSON.parse(new TextDecoder().decode(metaBytes)) as CacheMeta;
    } catch {
      return undefined; // a torn or foreign file is a miss, and will be rewritten
    }
    if (meta.url !== url) return undefined;
    return { item: { body, headers: meta.headers ?? {} }, fetchedAt: new Date(meta.fetchedAt) };
  }

  async function store(url: string, item: CollateralItem): Promise<void> {
    await mkdir(cacheDir, { recursive: true });
    const p = paths(url);
    const meta: CacheMeta = { url, headers: item.headers, fetchedAt: now().toISOString() };
    // Body first, metadata last, each via rename: a reader never sees metadata without its body.
    const tmp = `.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(p.body + tmp, item.body);
    await rename(p.body + tmp, p.body);
    await writeFile(p.meta + tmp, JSON.stringify(meta));
    await rename(p.meta + tmp, p.meta);
  }

  return {
    async get(req: CollateralRequest): Promise<CollateralItem | undefined> {
      const cached = await load(req.url);
      if (options.offline) return cached?.item;
      if (cached && now().getTime() - cached.fetchedAt.getTime() < maxAgeMs) return cached.item;
      let fresh: CollateralItem | undefined;
      try {
        fresh = await inner.get(req);
      } catch (e) {
        if (cached) return cached.item;
        throw e;
      }
      if (fresh !== undefined) await store(req.url, fresh);
      return fresh;
    },
  };
}

export { chainSources, httpSource, offlineSource } from './index.js';
