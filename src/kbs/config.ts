/**
 * Broker configuration: a JSON file (docs/kbs.md documents every key), overridable by flags. Secrets
 * are never inline: they come from files or environment variables.
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';

export interface KbsConfig {
  host: string;
  port: number;
  /** `sqlite:PATH` (default), `postgres://…`, `memory:` (tests). */
  db: string;
  /** Allows the insecure `sample` TEE; announced at start and on every log line. */
  devMode: boolean;
  /** File holding the base64 master key(s), one per line, current first; or env CLOISTER_KBS_MASTER_KEY. */
  masterKeyFile?: string;
  /** ES256 private JWK that signs EAR tokens (replicas must share it); generated per process if absent. */
  earKeyFile?: string;
  /** Ed25519 private JWK (cloister log keygen) that signs log checkpoints; generated if absent. */
  logKeyFile?: string;
  logOrigin: string;
  /** Public JWKs (a JSON array or {keys: […]}) allowed to sign admin tokens; none = admin API disabled. */
  adminKeysFile?: string;
  /** Longest admin-token lifetime (`exp - iat`) the broker accepts. */
  maxAdminTokenLifetimeSeconds: number;
  sessionTtlSeconds: number;
  tokenTtlSeconds: number;
  /**
   * Accept attestation tokens as `Authorization: Bearer` on resource requests (Trustee's token
   * clients). Off by default: an inference server publishes its token, so it would be a credential.
   */
  bearerTokens: boolean;
  bodyLimitBytes: number;
  maxResourceBytes: number;
  requestTimeoutMs: number;
  /**
   * Longest a policy evaluation may run on a policy worker before the release is denied; only
   * policies too costly for the event loop go there (docs/policy.md, Bounds).
   */
  policyTimeLimitMs: number;
  rateLimit: { perSecond: number; burst: number };
  /**
   * Addresses or CIDRs of reverse proxies whose X-Forwarded-For is believed (fastify `trustProxy`), so
   * the rate limit counts the real client; empty: the peer address is the client.
   */
  trustProxy: string[];
  checkpointIntervalSeconds: number;
  collateral: { dir?: string; cacheDir?: string; online: boolean };
  /** Per TEE kind, PEM/DER files replacing the vendor roots (test authorities only). */
  trustAnchors: Record<string, string[]>;
  /** Serve HTTPS with these PEM files (reloaded when either changes). */
  tls?: { certFile: string; keyFile: string };
  /**
   * Allow plain HTTP on a non-loopback address (a TLS-terminating proxy in front); without it such a
   * host is refused at start unless `tls` is set.
   */
  insecureHttp: boolean;
}

export const DEFAULT_CONFIG: KbsConfig = {
  host: '127.0.0.1',
  port: 8080,
  db: 'sqlite:./cloister-kbs.db',
  devMode: false,
  logOrigin: 'cloister-kbs/log',
  maxAdminTokenLifetimeSeconds: 86_400,
  sessionTtlSeconds: 300,
  tokenTtlSeconds: 3600,
  bearerTokens: false,
  bodyLimitBytes: 1024 * 1024,
  maxResourceBytes: 64 * 1024,
  requestTimeoutMs: 10_000,
  policyTimeLimitMs: 250,
  rateLimit: { perSecond: 100, burst: 200 },
  trustProxy: [],
  checkpointIntervalSeconds: 10,
  collateral: { online: false },
  trustAnchors: {},
  insecureHttp: false,
};

const KEYS = new Set(
  Object.keys(DEFAULT_CONFIG).concat(['masterKeyFile', 'earKeyFile', 'logKeyFile', 'adminKeysFile', 'tls']),
);

/** Reads a config file; relative paths in it are resolved against the file's folder. Unknown keys are refused. */
export async function loadConfig(
  path: string | undefined,
  overrides: Partial<KbsConfig> = {},
): Promise<KbsConfig> {
  let file: Partial<KbsConfig> = {};
  if (path) {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      throw new Error(
        `cannot read config ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
    try {
      file = JSON.parse(text) as Partial<KbsConfig>;
    } catch (e) {
      throw new Error(`${path}: not JSON (${(e as Error).message})`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file))
      throw new Error(`${path}: not a configuration (a JSON object of the keys in docs/kbs.md expected)`);
    const unknown = Object.keys(file).filter((k) => !KEYS.has(k));
    if (unknown.length)
      throw new Error(`config ${path}: unknown key(s) ${unknown.join(', ')} (see docs/kbs.md)`);
    const base = dirname(resolve(path));
    for (const k of ['masterKeyFile', 'earKeyFile', 'logKeyFile', 'adminKeysFile'] as const) {
      if (typeof file[k] === 'string') file[k] = resolve(base, file[k]);
    }
    if (typeof file.db === 'string' && file.db.startsWith('sqlite:') && !file.db.startsWith('sqlite::')) {
      file.db = `sqlite:${resolve(base, file.db.slice(7))}`;
    }
    if (isTlsFiles(file.tls)) {
      file.tls = { certFile: resolve(base, file.tls.certFile), keyFile: resolve(base, file.tls.keyFile) };
    }
    if (file.trustAnchors) {
      file.trustAnchors = Object.fromEntries(
        Object.entries(file.trustAnchors).map(([k, v]) => [k, v.map((f) => resolve(base, f))]),
      );
    }
  }
  const c: KbsConfig = { ...DEFAULT_CONFIG, ...file, ...overrides };
  if (typeof c.bearerTokens !== 'boolean') throw new Error('config bearerTokens must be true or false');
  if (typeof c.insecureHttp !== 'boolean') throw new Error('config insecureHttp must be true or false');
  if (c.tls !== undefined && !isTlsFiles(c.tls))
    throw new Error('config tls must be {"certFile": PEM certificate file, "keyFile": PEM private key file}');
  if (!Number.isInteger(c.port) || c.port < 0 || c.port > 65535)
    throw new Error(`port ${c.port} is not a TCP port`);
  for (const k of [
    'sessionTtlSeconds',
    'tokenTtlSeconds',
    'bodyLimitBytes',
    'maxResourceBytes',
    'requestTimeoutMs',
    'policyTimeLimitMs',
    'checkpointIntervalSeconds',
    'maxAdminTokenLifetimeSeconds',
  ] as const) {
    if (!(typeof c[k] === 'number' && c[k] > 0)) throw new Error(`config ${k} must be a positive number`);
  }
  const rl = c.rateLimit as Partial<KbsConfig['rateLimit']> | undefined;
  if (
    typeof rl?.perSecond !== 'number' ||
    !(rl.perSecond >= 0) ||
    (rl.perSecond > 0 && !(typeof rl.burst === 'number' && rl.burst >= 1))
  ) {
    throw new Error(
      'config rateLimit must be {"perSecond": requests per second on average (0: no limit), "burst": at least 1}',
    );
  }
  if (!Array.isArray(c.trustProxy) || !c.trustProxy.every(isAddressOrCidr)) {
    throw new Error(
      'config trustProxy must be a list of proxy IP addresses or CIDRs, e.g. ["10.0.0.5", "10.1.0.0/16"]',
    );
  }
  return c;
}

function isTlsFiles(v: unknown): v is { certFile: string; keyFile: string } {
  const t = v as { certFile?: unknown; keyFile?: unknown } | null | undefined;
  return (
    typeof t === 'object' &&
    t !== null &&
    typeof t.certFile === 'string' &&
    t.certFile !== '' &&
    typeof t.keyFile === 'string' &&
    t.keyFile !== ''
  );
}

/** An IPv4/IPv6 address, or one with a prefix length that fits it. */
function isAddressOrCidr(v: unknown): boolean {
  if (typeof v !== 'string') return false;
  const [addr, prefix, ...rest] = v.split('/');
  const family = isIP(addr ?? '');
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}
