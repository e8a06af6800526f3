/**
 * Node-only collateral sources: a folder of files (offline verification, test vectors) and an on-disk
 * cache in front of another source (usually httpSource) that keeps working when the network is gone.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
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

/** What an offline collateral folder holds, by the file names the verifiers look for. */
export interface CollateralInventory {
  dir: string;
  /** False when the folder does not exist (or is not a folder). */
  exists: boolean;
  intel: {
    /** FMSPCs with TCB info, per TEE ('any' for files not named by TEE, e.g. tcb_info_<fmspc>.json). */
    tcbInfo: { tee: 'tdx' | 'sgx' | 'any'; fmspc: string }[];
    /** tcb_info.json or collateral.json: one platform's set whose FMSPC only its content tells. */
    unnamedSets: number;
    qeIdentity: ('tdx' | 'sgx' | 'any')[];
    pckCrls: number;
    rootCaCrl: boolean;
  };
  amd: { vceks: number; vleks: number; crls: number; certChains: number };
  nvidia: { rims: number; ocsp: number };
}

/** Reads the names in `dir` (not the contents: the verifiers judge those) and sorts them by vendor. */
export async function inventoryCollateral(dir: string): Promise<CollateralInventory> {
  const inv: CollateralInventory = {
    dir,
    exists: true,
    intel: { tcbInfo: [], unnamedSets: 0, qeIdentity: [], pckCrls: 0, rootCaCrl: false },
    amd: { vceks: 0, vleks: 0, crls: 0, certChains: 0 },
    nvidia: { rims: 0, ocsp: 0 },
  };
  let names: string[];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  } catch (e) {
    if (isMissing(e) || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return { ...inv, exists: false };
    throw e;
  }
  for (const name of names.sort()) {
    if (name.endsWith(HEADERS_SUFFIX)) continue;
    const tcb = name.match(/^(?:(tdx|sgx)_)?tcb_info_([0-9a-f]{12})\.json$/i);
    const qe = name.match(/^(?:(tdx|sgx)_)?qe_identity\.json$/);
    if (tcb) {
      const tee = (tcb[1]?.toLowerCase() as 'tdx' | 'sgx' | undefined) ?? 'any';
      inv.intel.tcbInfo.push({ tee, fmspc: tcb[2]!.toLowerCase() });
    } else if (qe) inv.intel.qeIdentity.push((qe[1] as 'tdx' | 'sgx' | undefined) ?? 'any');
    else if (name === 'tcb_info.json' || name === 'collateral.json') inv.intel.unnamedSets++;
    else if (/^pck_crl(_(processor|platform))?\.der$/.test(name)) inv.intel.pckCrls++;
    else if (name === 'root_ca_crl.der') inv.intel.rootCaCrl = true;
    else if (/^vcek(_[0-9a-f]+_[0-9a-f]+)?\.(der|pem)$/.test(name)) inv.amd.vceks++;
    else if (/^vlek\.(der|pem)$/.test(name)) inv.amd.vleks++;
    else if (/^(amd_ark_(milan|genoa|turin)_crl\.der|crl\.(der|pem)|vlek_crl\.(der|pem))$/.test(name))
      inv.amd.crls++;
    else if (/^(amd_(milan|genoa|turin)_cert_chain|cert_chain|vlek_cert_chain)\.pem$/.test(name))
      inv.amd.certChains++;
    else if (/\.(xml|swidtag)$/.test(name)) inv.nvidia.rims++;
    else if (/^ocsp_[0-9a-f]+\.der$/.test(name)) inv.nvidia.ocsp++;
  }
  return inv;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

function intelPart(i: CollateralInventory['intel']): string {
  const sets = i.tcbInfo.length + i.unnamedSets;
  if (sets === 0 && i.qeIdentity.length === 0 && i.pckCrls === 0 && !i.rootCaCrl)
    return 'Intel PCS: none (TDX/SGX evidence will be refused offline)';
  const have: string[] = [];
  const lacks: string[] = [];
  if (i.tcbInfo.length > 0) {
    const byTee = (['tdx', 'sgx', 'any'] as const)
      .map((t) => [t, i.tcbInfo.filter((x) => x.tee === t).length] as const)
      .filter(([, n]) => n > 0)
      .map(([t, n]) => (t === 'any' ? `${n} SGX or TDX` : `${n} ${t.toUpperCase()}`));
    have.push(`TCB info for ${plural(i.tcbInfo.length, 'FMSPC')} (${byTee.join(', ')})`);
  }
  if (i.unnamedSets > 0) have.push(plural(i.unnamedSets, 'unnamed set'));
  if (sets === 0) lacks.push('TCB info');
  if (i.qeIdentity.length > 0)
    have.push(
      `QE identity (${i.qeIdentity.map((t) => (t === 'any' ? 'unnamed' : t.toUpperCase())).join(', ')})`,
    );
  else if (i.unnamedSets === 0) lacks.push('QE identity');
  if (i.pckCrls > 0) have.push(plural(i.pckCrls, 'PCK CRL'));
  else if (i.unnamedSets === 0) lacks.push('PCK CRL');
  if (i.rootCaCrl) have.push('root CA CRL');
  else if (i.unnamedSets === 0) lacks.push('root CA CRL');
  return `Intel PCS: ${have.join(', ') || 'nothing usable'}${lacks.length ? ` — lacks ${lacks.join(', ')} (TDX/SGX evidence will be refused offline)` : ''}`;
}

function amdPart(a: CollateralInventory['amd']): string {
  if (a.vceks + a.vleks + a.crls + a.certChains === 0)
    return 'AMD KDS: none (SNP evidence will be refused offline unless it carries its VCEK)';
  const have = [
    a.vceks > 0 ? plural(a.vceks, 'VCEK') : '',
    a.vleks > 0 ? plural(a.vleks, 'VLEK') : '',
    a.crls > 0 ? plural(a.crls, 'CRL') : '',
    a.certChains > 0 ? plural(a.certChains, 'cert chain') : '',
  ].filter(Boolean);
  const note =
    a.vceks + a.vleks === 0
      ? ' (no VCEK: SNP evidence will be refused offline unless it carries its VCEK)'
      : a.crls === 0
        ? ' (no CRL: ASK revocation not checked)'
        : '';
  return `AMD KDS: ${have.join(', ')}${note}`;
}

function nvidiaPart(n: CollateralInventory['nvidia']): string {
  if (n.rims === 0) return 'NVIDIA RIMs: none (GPU measurements will not be judged offline)';
  return `NVIDIA RIMs: ${n.rims}${n.ocsp > 0 ? `, ${plural(n.ocsp, 'OCSP response')}` : ''}`;
}

/** What the folder holds and lacks per vendor, and what evidence it will therefore refuse offline. */
export function describeInventory(inv: CollateralInventory): string {
  return `${intelPart(inv.intel)}; ${amdPart(inv.amd)}; ${nvidiaPart(inv.nvidia)}`;
}
