/**
 * Assembles a running key broker from its configuration: store, keys, verifiers, HTTP server,
 * checkpoint signing and session clean-up. Used by `cloister kbs serve`, the demo and the tests.
 */
import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { calculateJwkThumbprint, importJWK, type JWK } from 'jose';
import { cachedSource, directorySource } from '../attest/collateral/node.js';
import {
  chainSources,
  createDefaultRegistry,
  createVerifierContext,
  httpSource,
  memoryCache,
  offlineSource,
} from '../attest/index.js';
import type { CollateralSource, TeeKind } from '../attest/types.js';
import { checkListen, isLoopback, readTlsFiles } from '../http/index.js';
import { generateNoteSigner, type NoteSigner, signerFromJwk, vkeyOf } from '../translog/index.js';
import { AdminApi } from './admin.js';
import { Broker } from './broker.js';
import { collateralSummary } from './collateral-summary.js';
import type { KbsConfig } from './config.js';
import { buildLogEntry, KbsLogStore, signCheckpointNow } from './log.js';
import { Metrics } from './metrics.js';
import { PolicyPool } from './policy-pool.js';
import { masterKeyFromText, SecretBox } from './secrets.js';
import { createServer, type PublicKeys } from './server.js';
import { openStore } from './store/index.js';
import type { KbsStore } from './store/types.js';

export interface RunningBroker {
  url: string;
  app: FastifyInstance;
  store: KbsStore;
  broker: Broker;
  /** Verifier key of the checkpoint signer (for `cloister log verify --key`). */
  logVerifierKey: string;
  earPublicKey: CryptoKey;
  /** The EAR verification key as published at /.well-known/cloister-kbs (public JWK, kid = thumbprint). */
  earPublicJwk: JWK;
  /** Where policies too costly for the event loop are evaluated. */
  policyPool: PolicyPool;
  close(): Promise<void>;
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw new Error(
      `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
}

/**
 * A key file's JSON, or one line naming the file: a PEM or a typo must not surface as a bare
 * `JSON.parse` message (`No number after minus sign in JSON`) that names nothing.
 */
export function parseKeyJson(text: string, path: string, make: string): unknown {
  if (text.trimStart().startsWith('-----BEGIN'))
    throw new Error(`${path}: not a JWK (JSON expected; this is a PEM file: make a JWK with ${make})`);
  try {
    return JSON.parse(text);
  } catch {
    // Not the parser's message: it quotes the file's first characters, and a key file named by
    // mistake (the master key, say) would leak a piece of a secret into the log.
    throw new Error(
      `${path}: not a JWK (JSON expected, and this does not parse as JSON; make one with ${make})`,
    );
  }
}

/** The EAR verification key as the broker publishes it: a public JWK whose kid is its RFC 7638 thumbprint. */
export async function publishedEarKey(publicKey: CryptoKey): Promise<JWK> {
  const { kty, crv, x, y } = (await crypto.subtle.exportKey('jwk', publicKey)) as JWK;
  const jwk: JWK = { kty, crv, x, y };
  return { ...jwk, alg: 'ES256', use: 'sig', kid: await calculateJwkThumbprint(jwk) };
}

async function masterKeys(c: KbsConfig, log: (s: string) => void) {
  const text = c.masterKeyFile
    ? await readText(c.masterKeyFile, 'master key file')
    : process.env.CLOISTER_KBS_MASTER_KEY;
  if (!text) {
    if (!c.devMode)
      throw new Error(
        'no master key: set masterKeyFile in the config or CLOISTER_KBS_MASTER_KEY (32 bytes, base64)',
      );
    log('dev mode: no master key configured, using an ephemeral one (resources will not survive a restart)');
    return [
      await masterKeyFromText(
        btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
        'ephemeral',
      ),
    ];
  }
  const lines = text.split(/\s+/).filter(Boolean);
  const where = c.masterKeyFile ?? 'CLOISTER_KBS_MASTER_KEY';
  return Promise.all(lines.map((l, i) => masterKeyFromText(l, `${where}: master key ${i + 1}`)));
}

async function earKeyPair(c: KbsConfig, log: (s: string) => void): Promise<CryptoKeyPair> {
  if (!c.earKeyFile) {
    log(
      'no earKeyFile: signing attestation tokens with a key made for this process (other replicas will not accept them)',
    );
    return (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
  }
  const jwk = parseKeyJson(
    await readText(c.earKeyFile, 'EAR key'),
    c.earKeyFile,
    'cloister kbs keygen --ear',
  ) as JWK;
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || !jwk.d)
    throw new Error(`${c.earKeyFile}: the EAR key must be a private EC P-256 JWK`);
  const { d: _d, ...pub } = jwk;
  return {
    privateKey: (await importJWK(jwk, 'ES256')) as CryptoKey,
    publicKey: (await importJWK(pub, 'ES256')) as CryptoKey,
  };
}

async function logSigner(c: KbsConfig, log: (s: string) => void): Promise<NoteSigner> {
  if (!c.logKeyFile) {
    const g = await generateNoteSigner(c.logOrigin);
    log(`no logKeyFile: checkpoints are signed by a key made for this process: ${g.vkey}`);
    return g.signer;
  }
  const jwk = parseKeyJson(await readText(c.logKeyFile, 'log key'), c.logKeyFile, 'cloister log keygen');
  try {
    return await signerFromJwk(jwk as JsonWebKey & { kid?: string });
  } catch (e) {
    throw new Error(`${c.logKeyFile}: ${(e as Error).message}`);
  }
}

/**
 * What a broker with this configuration publishes at /.well-known/cloister-kbs, read from its key
 * files without starting it (`cloister kbs keys --config`). A key made per process has nothing to
 * publish ahead of time, so a configuration without earKeyFile or logKeyFile is refused.
 */
export async function offlinePublicKeys(c: KbsConfig): Promise<PublicKeys> {
  const missing = (['earKeyFile', 'logKeyFile'] as const).filter((k) => !c[k]);
  if (missing.length > 0)
    throw new Error(
      `the configuration has no ${missing.join(' or ')}: such a broker makes its key at start, so only it can publish it (cloister kbs keys --url)`,
    );
  const none = () => {};
  const [ear, signer] = await Promise.all([earKeyPair(c, none), logSigner(c, none)]);
  return {
    ear: { keys: [await publishedEarKey(ear.publicKey)] },
    log: { origin: c.logOrigin, verifierKey: vkeyOf(signer) },
  };
}

async function adminKeys(c: KbsConfig, log: (s: string) => void): Promise<JWK[]> {
  if (!c.adminKeysFile) {
    log('no adminKeysFile: the admin API refuses every request');
    return [];
  }
  const v = parseKeyJson(
    await readText(c.adminKeysFile, 'admin keys'),
    c.adminKeysFile,
    'cloister kbs admin-key',
  ) as JWK | JWK[] | { keys: JWK[] } | null;
  if (typeof v !== 'object' || v === null)
    throw new Error(
      `${c.adminKeysFile}: not a JWK, JWK array or JWKS (found ${v === null ? 'null' : typeof v})`,
    );
  const keys = Array.isArray(v) ? v : 'keys' in v && Array.isArray(v.keys) ? v.keys : [v as JWK];
  for (const k of keys) {
    if ('d' in k) throw new Error(`${c.adminKeysFile}: admin keys must be public keys (found a private key)`);
  }
  return keys;
}

function collateral(c: KbsConfig): CollateralSource {
  const sources: CollateralSource[] = [];
  if (c.collateral.dir) sources.push(directorySource(c.collateral.dir));
  if (c.collateral.online) {
    const http = httpSource();
    sources.push(c.collateral.cacheDir ? cachedSource(http, c.collateral.cacheDir) : http);
  } else if (c.collateral.cacheDir) {
    sources.push(cachedSource(offlineSource, c.collateral.cacheDir, { offline: true }));
  }
  return sources.length ? chainSources(...sources) : offlineSource;
}

export interface StartOptions {
  /** Log sink (default stderr). */
  log?: (line: string) => void;
  /** Collateral source used instead of the configured one (embedding, tests). */
  collateral?: CollateralSource;
  /** Trust anchors added to the configured ones, per TEE kind (test authorities in tests). */
  trustAnchors?: Partial<Record<TeeKind, Uint8Array[]>>;
  /** The policy worker's module (tests running the sources use the built one: workers load compiled files). */
  policyWorkerUrl?: URL;
}

export async function startBroker(c: KbsConfig, opts: StartOptions = {}): Promise<RunningBroker> {
  // Refused before anything else: an address served in clear, or TLS files that cannot serve.
  checkListen({ host: c.host, port: c.port, tls: c.tls !== undefined, insecureHttp: c.insecureHttp });
  if (c.tls) readTlsFiles(c.tls);
  const sink = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const prefix = c.devMode ? '[DEV MODE: insecure sample TEE accepted] ' : '';
  const log = (line: string) => sink(`${prefix}cloister-kbs: ${line}`);
  if (c.devMode)
    log('DEV MODE IS ON: the insecure `sample` TEE can obtain keys. Never use dev mode with real secrets.');
  // What the configured collateral holds and lacks, so a broker missing it says so at start.
  if (!opts.collateral) log(await collateralSummary(c.collateral));
  if (!c.tls && c.insecureHttp && !isLoopback(c.host))
    log(
      `WARNING: insecureHttp: plain HTTP on ${c.host}; admin tokens and keys cross the network in clear unless a TLS-terminating proxy is in front`,
    );

  const store = await openStore(c.db, { buildLogEntry });
  // Schema 2 keeps reference values of version 1's in-band tenant `default` inert: an operator may have
  // written them for admin-made repositories, or a tenant admin named `default` may have (the attack the
  // migration ends), so they are neither dropped nor made operator-wide. Say so at every start until
  // an operator decides.
  const inert = await store.listReferenceValues({ tenant: 'default' });
  if (inert.length > 0) {
    log(
      `WARNING: ${inert.length} reference value set(s) of version 1's tenant "default" judge nothing since schema 2 (${inert.map((r) => `${r.tee}/${r.name}`).join(', ')}): if an operator wrote them, add them again operator-wide (cloister kbs refvalue add without --tenant); docs/kbs-store.md`,
    );
  }
  const secrets = new SecretBox(await masterKeys(c, log));
  const earKey = await earKeyPair(c, log);
  const earJwk = await publishedEarKey(earKey.publicKey);
  const signer = await logSigner(c, log);
  const trustAnchors: Partial<Record<TeeKind, Uint8Array[]>> = {};
  for (const [kind, files] of Object.entries(c.trustAnchors)) {
    trustAnchors[kind as TeeKind] = await Promise.all(
      files.map(async (f) => new Uint8Array(await readFile(f))),
    );
    log(`${kind}: vendor roots REPLACED by ${files.join(', ')} (test authorities only)`);
  }
  for (const [kind, anchors] of Object.entries(opts.trustAnchors ?? {}) as [TeeKind, Uint8Array[]][]) {
    trustAnchors[kind as TeeKind] = [...(trustAnchors[kind as TeeKind] ?? []), ...anchors];
    log(`${kind}: vendor roots REPLACED by ${anchors.length} embedded anchor(s) (test authorities only)`);
  }
  const metrics = new Metrics();
  const policyPool = new PolicyPool({
    timeLimitMs: c.policyTimeLimitMs,
    ...(opts.policyWorkerUrl ? { workerUrl: opts.policyWorkerUrl } : {}),
  });
  const broker = new Broker({
    policyPool,
    store,
    secrets,
    // Each broker owns its verifier state (verified chains, collateral), so two in one process (tests,
    // tenants' brokers side by side) never share what one of them trusted.
    registry: createDefaultRegistry({ context: createVerifierContext() }),
    // Collateral changes daily at most; re-reading a folder or disk cache per attestation cost more
    // than the verification itself.
    collateral: memoryCache(opts.collateral ?? collateral(c)),
    earKey,
    earKeyId: earJwk.kid!,
    devMode: c.devMode,
    sessionTtlSeconds: c.sessionTtlSeconds,
    tokenTtlSeconds: c.tokenTtlSeconds,
    bearerTokens: c.bearerTokens,
    trustAnchors,
    onEvent: (e) => {
      if (e.type === 'attest' && !e.ok) log(`attestation refused (${e.tee}): ${e.reason}`);
      if (e.type === 'release' && !e.allowed) log(`release of ${e.path} denied: ${e.reasons.join('; ')}`);
      if (e.type === 'checkpoint-refused') log(`training checkpoint refused (job ${e.job}): ${e.reason}`);
      if (e.type === 'receipt-refused') log(`training receipt refused (job ${e.job}): ${e.reason}`);
    },
  });
  const logStore = new KbsLogStore(store);
  const checkpoint = () => signCheckpointNow(store, logStore, c.logOrigin, signer);
  const admin = new AdminApi({
    policyPool,
    store,
    secrets,
    adminKeys: await adminKeys(c, log),
    earPublicKey: earKey.publicKey,
    devMode: c.devMode,
    maxResourceBytes: c.maxResourceBytes,
    maxAdminTokenLifetimeSeconds: c.maxAdminTokenLifetimeSeconds,
    checkpoint,
    logStore,
    origin: c.logOrigin,
  });
  const app = await createServer({
    broker,
    admin,
    metrics,
    bodyLimit: c.bodyLimitBytes,
    rateLimit: c.rateLimit,
    trustProxy: c.trustProxy,
    requestTimeoutMs: c.requestTimeoutMs,
    sessionTtlSeconds: c.sessionTtlSeconds,
    log,
    ready: () => store.ping(),
    publicKeys: { ear: { keys: [earJwk] }, log: { origin: c.logOrigin, verifierKey: vkeyOf(signer) } },
    ...(c.tls ? { tls: c.tls } : {}),
  });
  const address = await app.listen({ host: c.host, port: c.port });

  let stopping = false;
  const tick = async () => {
    if (stopping) return;
    try {
      await checkpoint();
      await store.deleteExpiredSessions(new Date().toISOString());
    } catch (e) {
      log(`background task failed: ${(e as Error).message}`);
    }
  };
  const timer = setInterval(tick, c.checkpointIntervalSeconds * 1000);
  timer.unref();
  log(
    `listening on ${address} (store ${c.db.replace(/\/\/[^@]*@/, '//…@')}, TEE kinds: ${broker.teeKinds.join(', ')})`,
  );
  log(`checkpoint verifier key: ${vkeyOf(signer)}`);

  return {
    url: address,
    app,
    store,
    broker,
    logVerifierKey: vkeyOf(signer),
    earPublicKey: earKey.publicKey,
    earPublicJwk: earJwk,
    policyPool,
    async close() {
      stopping = true;
      clearInterval(timer);
      await app.close();
      await tick().catch(() => {});
      await policyPool.close();
      await store.close();
    },
  };
}
