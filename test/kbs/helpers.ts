import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import pg from 'pg';
import { createSampleAttester } from '../../src/attest/index.js';
import { ADMIN_AUDIENCE } from '../../src/kbs/admin.js';
import { type RunningBroker, type StartOptions, startBroker } from '../../src/kbs/app.js';
import { DEFAULT_CONFIG, type KbsConfig } from '../../src/kbs/config.js';
import type { Attester } from '../../src/tee/kbs-client.js';
import { generateNoteSigner } from '../../src/translog/index.js';
import { bs } from '../../src/util/bytes.js';

/** Key files a broker (or several replicas) reads, plus what tests need to use them. */
export interface TestKeys {
  dir: string;
  adminKeysFile: string;
  masterKeyFile: string;
  /** ES256 private JWK: replicas sharing it accept each other's attestation tokens. */
  earKeyFile: string;
  /** Ed25519 private JWK signing checkpoints. */
  logKeyFile: string;
  /** Verifier key of logKeyFile. */
  logVkey: string;
  adminPrivateKey: CryptoKey;
  /** The admin private key as a JWK file, for `cloister kbs admin-token --key`. */
  adminPrivateKeyFile: string;
}

export const LOG_ORIGIN = 'cloister-kbs/log';

export async function testKeys(): Promise<TestKeys> {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-kbs-'));
  const { privateKey, publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text, { mode: 0o600 });
    return join(dir, name);
  };
  const ear = await generateKeyPair('ES256', { extractable: true });
  const log = await generateNoteSigner(LOG_ORIGIN);
  return {
    dir,
    adminKeysFile: file('admin.pub.jwk', JSON.stringify([{ ...(await exportJWK(publicKey)), alg: 'EdDSA' }])),
    adminPrivateKeyFile: file(
      'admin.jwk',
      JSON.stringify({ ...(await exportJWK(privateKey)), alg: 'EdDSA' }),
    ),
    masterKeyFile: file(
      'master.key',
      btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
    ),
    earKeyFile: file('ear.jwk', JSON.stringify(await exportJWK(ear.privateKey))),
    logKeyFile: file('log.jwk', JSON.stringify(log.jwk)),
    logVkey: log.vkey,
    adminPrivateKey: privateKey,
  };
}

/**
 * Signs an admin token; `claims` and `o` let tests build broken ones (null leaves `jti`, `issuedAt` or
 * `expiresAt` out). `tenant` is put in as given, '' included.
 */
export function adminToken(
  key: CryptoKey,
  role = 'admin',
  tenant?: string,
  o: {
    audience?: string;
    expiresAt?: number | string | null;
    issuedAt?: number | null;
    jti?: string | null;
    claims?: Record<string, unknown>;
  } = {},
): Promise<string> {
  const t = new SignJWT({ role, ...(tenant !== undefined ? { tenant } : {}), ...o.claims })
    .setProtectedHeader({ alg: 'EdDSA' })
    .setSubject('test')
    .setAudience(o.audience ?? ADMIN_AUDIENCE);
  if (o.expiresAt !== null) t.setExpirationTime(o.expiresAt ?? '5m');
  if (o.issuedAt !== null) t.setIssuedAt(o.issuedAt ?? Math.floor(Date.now() / 1000) - 600);
  if (o.jti !== null) t.setJti(o.jti ?? crypto.randomUUID());
  return t.sign(key);
}

export interface TestBroker extends RunningBroker {
  admin(role?: string, tenant?: string): Promise<string>;
  call(method: string, path: string, token: string, body?: Uint8Array | object): Promise<Response>;
  lines: string[];
}

/**
 * A broker on a random port with an admin key whose tokens the tests can mint. Replicas pass the same
 * `keys` (and the same `db`).
 */
export async function testBroker(
  config: Partial<KbsConfig> = {},
  opts: StartOptions & { keys?: TestKeys } = {},
): Promise<TestBroker> {
  const { keys: given, ...startOpts } = opts;
  const keys = given ?? (await testKeys());
  const lines: string[] = [];
  const running = await startBroker(
    {
      ...DEFAULT_CONFIG,
      port: 0,
      db: `sqlite:${join(keys.dir, 'kbs.db')}`,
      adminKeysFile: keys.adminKeysFile,
      masterKeyFile: keys.masterKeyFile,
      earKeyFile: keys.earKeyFile,
      logKeyFile: keys.logKeyFile,
      rateLimit: { perSecond: 0, burst: 0 },
      ...config,
    },
    { log: (l) => lines.push(l), ...startOpts },
  );
  return {
    ...running,
    lines,
    admin: (role = 'admin', tenant?: string) => adminToken(keys.adminPrivateKey, role, tenant),
    call: (method, path, token, body) =>
      fetch(new URL(path, running.url), {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body instanceof Uint8Array
            ? { 'content-type': 'application/octet-stream' }
            : body
              ? { 'content-type': 'application/json' }
              : {}),
        },
        ...(body instanceof Uint8Array ? { body: bs(body) } : body ? { body: JSON.stringify(body) } : {}),
      }),
  };
}

/** The sample TEE as a KBS-client attester; `tamper` lets a test break the binding. */
export async function sampleAttester(
  o: {
    debug?: boolean;
    measurement?: string;
    hostData?: string;
    tamper?: (rd: Uint8Array) => Uint8Array;
  } = {},
): Promise<Attester> {
  const a = await createSampleAttester({
    ...(o.debug ? { debug: true } : {}),
    ...(o.measurement ? { measurement: o.measurement } : {}),
    ...(o.hostData ? { hostData: o.hostData } : {}),
  });
  return {
    tee: 'sample',
    async primaryEvidence(reportData) {
      return JSON.parse(
        new TextDecoder().decode(await a.attest(o.tamper ? o.tamper(reportData) : reportData)),
      );
    },
  };
}

/** Polls `probe` until it returns a value other than undefined (timing without sleeps). */
export async function until<T>(probe: () => Promise<T | undefined>, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// PostgreSQL for the store-backend tests. CLOISTER_TEST_PG names the server; `skip` leaves them out.
export const PG_URL = process.env.CLOISTER_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
export const PG_ENABLED = PG_URL !== 'skip';

/** A fresh schema on the test server (a store URL) and a function that drops it. */
export function pgSchema(): { url: string; drop(): Promise<void> } {
  const schema = `cloister_kbs_${crypto.getRandomValues(new Uint32Array(2)).join('_')}`;
  return {
    url: `${PG_URL}${PG_URL.includes('?') ? '&' : '?'}schema=${schema}`,
    async drop() {
      const c = new pg.Client({ connectionString: PG_URL });
      await c.connect();
      try {
        await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      } finally {
        await c.end();
      }
    },
  };
}
