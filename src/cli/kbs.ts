/** `cloister kbs …`: run the key broker and administer it over its admin API. */
import { readFile } from 'node:fs/promises';
import { type Command, CommanderError, Option } from 'commander';
import type { JWK } from 'jose';
import { ADMIN_ROLES, type AdminBody, AdminClient } from '../kbs/admin-client.js';
import { FileError, writeFileAtomically } from '../seal/node.js';
import { printJson } from './io.js';
import { integerOption } from './numbers.js';
import {
  cacertOption,
  insecureHttpOption,
  type TlsServeCliOptions,
  tlsCertOption,
  tlsFilesOf,
  tlsKeyOption,
} from './tls.js';

export interface Conn {
  url: string;
  token?: string;
  cacert?: string;
  insecureHttp?: boolean;
}

/** A client's `--insecure-http`: plain http:// to a broker that is not on this machine. */
export const clientInsecureHttpOption = (): Option =>
  new Option(
    '--insecure-http',
    'allow a plain http:// --url that is not loopback (tokens and keys then cross the network in clear)',
  );

/** `--url` and `--token` of every verb that calls the admin API (`cloister log export` too). */
export const connOptions = (c: Command) =>
  c
    .addOption(
      new Option('--url <url>', 'key broker URL').env('CLOISTER_KBS_URL').default('http://127.0.0.1:8080'),
    )
    .addOption(
      new Option('--token <jwt>', 'admin token (see `cloister kbs admin-token`)').env('CLOISTER_ADMIN_TOKEN'),
    )
    .addOption(cacertOption())
    .addOption(clientInsecureHttpOption());

/** One admin call with the connection's token; a missing token is refused before anything is sent. */
async function call(conn: Conn, method: string, path: string, body?: AdminBody): Promise<unknown> {
  if (!conn.token) throw new FileError('no admin token: pass --token or set CLOISTER_ADMIN_TOKEN');
  const { checkClientUrl, clientFetch } = await import('../http/client.js');
  checkClientUrl(conn.url, conn.insecureHttp);
  return new AdminClient(conn.url, conn.token, await clientFetch(conn.cacert)).call(method, path, body);
}

/**
 * A Cloister key-encryption key names the resource it belongs under in its `kid` (`cloister keygen
 * --kek … --uri kbs:///…`), and sealing records that name in the sealed file. Stored under another
 * path, the TEE would ask for the kid's path and be refused, long after this mistake: so it is refused
 * here, where both names are known.
 */
function checkKeyName(path: string, file: string, value: Uint8Array): void {
  let kid: unknown;
  try {
    kid = (JSON.parse(new TextDecoder().decode(value)) as { kid?: unknown } | null)?.kid;
  } catch {
    return; // not JSON: not a JWK, nothing names it
  }
  if (typeof kid !== 'string' || !kid.startsWith('kbs:///') || kid === `kbs:///${path}`) return;
  throw new FileError(
    `${file} is the key ${kid} (its kid), not kbs:///${path}: store it as ${kid.slice('kbs:///'.length)}, or make a key for this name with cloister keygen --kek FILE --uri kbs:///${path}`,
  );
}

/** What `cloister kbs policy eval` exits with: 0 allowed, 3 denied (the shared exit-status convention). */
export const POLICY_DENIED_STATUS = 3;

async function readSecretFile(path: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(path));
  } catch (e) {
    throw new FileError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

interface KbsServeCliOptions extends TlsServeCliOptions {
  config?: string;
  db?: string;
  port?: number;
  host?: string;
  dev?: boolean;
}

export function registerKbs(program: Command): void {
  const kbs = program
    .command('kbs')
    .description('the key broker: serve it, and administer keys, policies and reference values');

  kbs
    .command('serve')
    .description('run the key broker (CoCo KBS protocol 0.4.0 + admin API)')
    .option('--config <file>', 'JSON configuration (docs/kbs.md)')
    .option('--db <url>', 'sqlite:PATH or postgres://… (overrides the config)')
    .option('--port <n>', 'TCP port (overrides the config)', (v) => integerOption(v, '--port', 0, 65535))
    .option('--host <addr>', 'listen address (overrides the config)')
    .option('--dev', 'dev mode: accept the insecure sample TEE (announced on every log line)')
    .addOption(tlsCertOption())
    .addOption(tlsKeyOption())
    .addOption(insecureHttpOption())
    .addHelpText(
      'after',
      '\nExamples:\n  cloister kbs serve --config kbs.json\n  cloister kbs serve --config kbs.json --host 0.0.0.0 --tls-cert kbs.crt --tls-key kbs.key\n  CLOISTER_KBS_MASTER_KEY=$(head -c32 /dev/urandom | base64) cloister kbs serve --db sqlite:kbs.db --port 8080',
    )
    .action(async (o: KbsServeCliOptions) => {
      const tls = tlsFilesOf(o);
      // The broker (fastify, the stores, the verifiers) loads only when this verb runs.
      const { loadConfig } = await import('../kbs/index.js');
      const { startBroker } = await import('../kbs/index.js');
      const config = await loadConfig(o.config, {
        ...(o.db ? { db: o.db } : {}),
        ...(o.port !== undefined ? { port: o.port } : {}),
        ...(o.host ? { host: o.host } : {}),
        ...(o.dev ? { devMode: true } : {}),
        ...(tls ? { tls } : {}),
        ...(o.insecureHttp ? { insecureHttp: true } : {}),
      });
      const running = await startBroker(config);
      // The URL on stdout lets scripts (and tests) find a broker started on port 0.
      process.stdout.write(`${running.url}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.stderr.write('cloister-kbs: shutting down\n');
          running.close().then(resolve, resolve);
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });

  kbs
    .command('keygen')
    .description("make the broker's own keys: the EAR signing key, or a master key")
    .option('--ear <file>', 'write a new EAR signing key: private EC P-256 JWK (mode 0600), for earKeyFile')
    .option('--pub <file>', 'with --ear: write its public JWK too (for --ear-key of verify-receipt and chat)')
    .option(
      '--master <file>',
      'write a new master key: 32 random bytes in base64 (mode 0600), for masterKeyFile',
    )
    .option('--force', 'overwrite existing files')
    .addHelpText(
      'after',
      '\nExamples:\n  cloister kbs keygen --ear ear.jwk --pub ear.pub.jwk\n  cloister kbs keygen --master master.key\n\nThe log key is made by `cloister log keygen`, admin keys by `cloister kbs admin-key`.',
    )
    .action(async (o: { ear?: string; pub?: string; master?: string; force?: boolean }) => {
      if ((o.ear === undefined) === (o.master === undefined))
        throw new FileError('kbs keygen: give exactly one of --ear FILE [--pub FILE] or --master FILE');
      if (o.master !== undefined) {
        if (o.pub !== undefined) throw new FileError('kbs keygen: --pub goes with --ear, not --master');
        const key = crypto.getRandomValues(new Uint8Array(32));
        await writeFileAtomically(o.master, `${Buffer.from(key).toString('base64')}\n`, {
          mode: 0o600,
          force: !!o.force,
        });
        key.fill(0);
        process.stderr.write(`wrote master key ${o.master} (masterKeyFile; keep it secret, back it up)\n`);
        return;
      }
      const { exportJWK, generateKeyPair } = await import('jose');
      const { publishedEarKey } = await import('../kbs/index.js');
      const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
      const pub = await publishedEarKey(publicKey);
      const priv = { ...(await exportJWK(privateKey)), alg: 'ES256', kid: pub.kid };
      await writeFileAtomically(o.ear!, `${JSON.stringify(priv, null, 2)}\n`, {
        mode: 0o600,
        force: !!o.force,
      });
      if (o.pub !== undefined)
        await writeFileAtomically(o.pub, `${JSON.stringify(pub, null, 2)}\n`, {
          mode: 0o644,
          force: !!o.force,
        });
      process.stderr.write(
        `wrote EAR signing key ${o.ear} (earKeyFile; kid ${pub.kid})${o.pub !== undefined ? ` and its public key ${o.pub}` : ''}\n`,
      );
    });

  kbs
    .command('keys')
    .description("print the broker's log verifier key and save its EAR verification key (public JWK)")
    .addOption(
      new Option('--url <url>', 'ask this running broker (GET /.well-known/cloister-kbs)')
        .env('CLOISTER_KBS_URL')
        .default('http://127.0.0.1:8080'),
    )
    .addOption(cacertOption())
    .option('--config <file>', 'offline: read the keys named by this broker configuration instead')
    .option('--ear-out <file>', 'write the EAR verification key here (public JWK, as --ear-key takes it)')
    .option('--force', 'overwrite --ear-out')
    .addHelpText(
      'after',
      '\nThe log verifier key goes to stdout (for `cloister log verify --key-file`), the rest to stderr.\n' +
        '\nExamples:\n  cloister kbs keys --url https://kbs.example --ear-out broker-ear.pub.jwk > broker.vkey\n' +
        '  cloister kbs keys --config kbs.json --ear-out broker-ear.pub.jwk',
    )
    .addOption(clientInsecureHttpOption())
    .action(async (o: Conn & { config?: string; earOut?: string; force?: boolean }) => {
      let keys: { ear: { keys: JWK[] }; log: { origin: string; verifierKey: string } };
      if (o.config !== undefined) {
        const { loadConfig, offlinePublicKeys } = await import('../kbs/index.js');
        keys = await offlinePublicKeys(await loadConfig(o.config));
      } else {
        // What comes back becomes a trust anchor (--ear-key, --key-file): fetched like an admin call.
        const { checkClientUrl, clientFetch } = await import('../http/client.js');
        checkClientUrl(o.url, o.insecureHttp);
        const { fetchPublicKeys } = await import('../kbs/admin-client.js');
        keys = await fetchPublicKeys(o.url, await clientFetch(o.cacert));
      }
      const [ear] = keys.ear.keys;
      if (o.earOut !== undefined) {
        if (!ear) throw new FileError('the broker publishes no EAR verification key');
        await writeFileAtomically(o.earOut, `${JSON.stringify(ear, null, 2)}\n`, {
          mode: 0o644,
          force: !!o.force,
        });
      }
      process.stdout.write(`${keys.log.verifierKey}\n`);
      process.stderr.write(
        `log origin: ${keys.log.origin}\nEAR key: ${ear?.kid ?? 'none'}${o.earOut !== undefined ? ` (written to ${o.earOut})` : ' (--ear-out FILE saves it)'}\n`,
      );
    });

  kbs
    .command('rotate-master-key')
    .description('re-encrypt every stored resource under a new master key')
    .requiredOption('--db <url>', 'the broker store (sqlite:PATH or postgres://…)')
    .requiredOption('--old <file>', 'file with the current master key (base64)')
    .requiredOption('--new <file>', 'file with the new master key (base64)')
    .addHelpText(
      'after',
      '\nConfigure running brokers with both keys first (masterKeyFile: new key on the first line, old on the\n' +
        'second), run this, then drop the old key.\n\nExample:\n  cloister kbs rotate-master-key --db sqlite:kbs.db --old master.key --new master-2.key',
    )
    .action(async (o: { db: string; old: string; new: string }) => {
      const { masterKeyFromText, SecretBox } = await import('../kbs/index.js');
      const { openStore } = await import('../kbs/index.js');
      const { buildLogEntry } = await import('../kbs/index.js');
      const oldKey = await masterKeyFromText(new TextDecoder().decode(await readSecretFile(o.old)), o.old);
      const newKey = await masterKeyFromText(new TextDecoder().decode(await readSecretFile(o.new)), o.new);
      const box = new SecretBox([newKey, oldKey]);
      const store = await openStore(o.db, { buildLogEntry });
      try {
        const n = await store.reencryptSecrets(
          async (rec) => box.seal(rec.path, await box.open(rec.path, rec.secret)),
          {
            kind: 'key',
            tenant: null,
            actor: `operator:${process.env.USER ?? 'unknown'}`,
            subject: 'master-key',
            details: { from: oldKey.id, to: newKey.id },
          },
        );
        process.stderr.write(`re-encrypted ${n} resource(s) from master key ${oldKey.id} to ${newKey.id}\n`);
      } finally {
        await store.close();
      }
    });

  kbs
    .command('admin-key')
    .description('make an admin signing key pair (Ed25519 JWKs); give the public one to the broker')
    .requiredOption('--out <file>', 'private key (JWK, mode 0600)')
    .requiredOption('--pub <file>', 'public key (JWK) for the broker configuration')
    .addHelpText('after', '\nExample:\n  cloister kbs admin-key --out admin.jwk --pub admin.pub.jwk')
    .action(async (o: { out: string; pub: string }) => {
      const { exportJWK, generateKeyPair } = await import('jose');
      const { privateKey, publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
      const kid = crypto.randomUUID();
      await writeFileAtomically(
        o.out,
        `${JSON.stringify({ ...(await exportJWK(privateKey)), alg: 'EdDSA', kid }, null, 2)}\n`,
        { mode: 0o600 },
      );
      await writeFileAtomically(
        o.pub,
        `${JSON.stringify({ ...(await exportJWK(publicKey)), alg: 'EdDSA', kid }, null, 2)}\n`,
        { mode: 0o644 },
      );
      process.stderr.write(
        `wrote ${o.out} (keep secret) and ${o.pub} (add to adminKeys in the broker config)\n`,
      );
    });

  kbs
    .command('admin-token')
    .description('sign an admin token with an admin key (it carries a token id for revocation)')
    .requiredOption('--key <file>', 'admin private key (JWK)')
    .addOption(new Option('--role <role>', 'role').choices([...ADMIN_ROLES]).default('admin'))
    .option(
      '--tenant <name>',
      'tenant, for tenant-admin and auditor only: a lower-case letter, then letters, digits, _',
    )
    .option('--subject <name>', 'who the token is for', process.env.USER ?? 'operator')
    .option(
      '--ttl <seconds>',
      'lifetime in seconds (the broker refuses more than its maxAdminTokenLifetimeSeconds)',
      '3600',
    )
    .addHelpText(
      'after',
      '\nThe token goes to stdout, its id and expiry to stderr (`cloister kbs token revoke` takes either).\n' +
        '\nExample:\n  export CLOISTER_ADMIN_TOKEN=$(cloister kbs admin-token --key admin.jwk --role tenant-admin --tenant acme)',
    )
    .action(async (o: { key: string; role: string; tenant?: string; subject: string; ttl: string }) => {
      if (!/^\d+$/.test(o.ttl)) throw new FileError(`--ttl ${o.ttl}: give the lifetime in whole seconds`);
      const jwk = JSON.parse(new TextDecoder().decode(await readSecretFile(o.key))) as JWK;
      if (!jwk.d) throw new FileError(`${o.key} is not a private key`);
      const alg = jwk.alg ?? (jwk.kty === 'OKP' ? 'EdDSA' : 'ES256');
      const { importJWK } = await import('jose');
      const { AdminTokenError, signAdminToken } = await import('../kbs/index.js');
      const key = await importJWK(jwk, alg);
      let issued: Awaited<ReturnType<typeof signAdminToken>>;
      try {
        issued = await signAdminToken(
          key,
          { alg, ...(jwk.kid ? { kid: jwk.kid } : {}) },
          {
            role: o.role,
            ...(o.tenant !== undefined ? { tenant: o.tenant } : {}),
            subject: o.subject,
            ttlSeconds: Number(o.ttl),
          },
        );
      } catch (e) {
        if (e instanceof AdminTokenError) throw new FileError(e.message);
        throw e;
      }
      process.stdout.write(`${issued.token}\n`);
      process.stderr.write(
        `token id ${issued.tokenId}, expires ${new Date(issued.expiresAt * 1000).toISOString()}\n`,
      );
    });

  const token = kbs.command('token').description('admin tokens: revoke them, list revocations');
  connOptions(
    token
      .command('revoke')
      .description('revoke an admin token before it expires (by its id, or the token itself)')
      .argument('<id-or-token>', 'the token id (jti) that admin-token printed, or the whole token')
      .option('--reason <text>', 'why, for the transparency log')
      .addHelpText('after', '\nExample:\n  cloister kbs token revoke 5f0c…-…  --reason "laptop lost"'),
  ).action(async (idOrToken: string, o: Conn & { reason?: string }) => {
    let tokenId = idOrToken;
    let expiresAt: string | undefined;
    if (idOrToken.split('.').length === 3) {
      // A whole token: its id and expiry are read, not trusted; only the id is revoked.
      const { decodeJwt } = await import('jose');
      let claims: ReturnType<typeof decodeJwt>;
      try {
        claims = decodeJwt(idOrToken);
      } catch (e) {
        throw new FileError(`not a token: ${(e as Error).message}`);
      }
      if (typeof claims.jti !== 'string')
        throw new FileError('this token has no id (jti); it cannot be revoked, only left to expire');
      tokenId = claims.jti;
      if (typeof claims.exp === 'number') expiresAt = new Date(claims.exp * 1000).toISOString();
    }
    printJson(
      await call(o, 'POST', '/admin/v1/tokens/revoke', {
        json: { tokenId, ...(expiresAt ? { expiresAt } : {}), ...(o.reason ? { reason: o.reason } : {}) },
      }),
    );
  });
  connOptions(
    token
      .command('ls')
      .description('list revoked admin tokens')
      .addHelpText('after', '\nExample:\n  cloister kbs token ls'),
  ).action(async (o: Conn) => printJson(await call(o, 'GET', '/admin/v1/tokens/revoked')));

  const resource = kbs.command('resource').description('resources (keys and secrets) held by the broker');
  connOptions(
    resource
      .command('put')
      .description('store a new resource; its value is read from FILE and never shown again')
      .argument('<path>', '<repository>/<type>/<tag>')
      .argument('<file>', 'the value')
      .option('--content-type <type>', 'media type recorded with the resource')
      .addHelpText('after', '\nExample:\n  cloister kbs resource put owner/models/kek1 owner.kek'),
  ).action(async (path: string, file: string, o: Conn & { contentType?: string }) => {
    const q = o.contentType ? `?contentType=${encodeURIComponent(o.contentType)}` : '';
    const value = await readSecretFile(file);
    checkKeyName(path, file, value);
    printJson(await call(o, 'PUT', `/admin/v1/resources/${path}${q}`, { bytes: value }));
  });
  connOptions(
    resource
      .command('rotate')
      .description('replace a resource value with a new version')
      .argument('<path>', '<repository>/<type>/<tag>')
      .argument('<file>', 'the new value')
      .addHelpText('after', '\nExample:\n  cloister kbs resource rotate owner/models/kek1 owner-v2.kek'),
  ).action(async (path: string, file: string, o: Conn) => {
    const value = await readSecretFile(file);
    checkKeyName(path, file, value);
    printJson(await call(o, 'POST', `/admin/v1/resources/${path}`, { bytes: value }));
  });
  connOptions(
    resource
      .command('rm')
      .description('delete a resource')
      .argument('<path>', '<repository>/<type>/<tag>')
      .addHelpText('after', '\nExample:\n  cloister kbs resource rm owner/models/kek1'),
  ).action(async (path: string, o: Conn) => {
    await call(o, 'DELETE', `/admin/v1/resources/${path}`);
    process.stderr.write(`deleted ${path}\n`);
  });
  connOptions(
    resource
      .command('ls')
      .description('list resource metadata (values are never returned)')
      .addHelpText('after', '\nExample:\n  cloister kbs resource ls'),
  ).action(async (o: Conn) => printJson(await call(o, 'GET', '/admin/v1/resources')));

  const policy = kbs.command('policy').description('CEL release policies');
  connOptions(
    policy
      .command('set')
      .description('set the policy of a scope from a CEL file')
      .argument('<scope>', '"default", "repository:<name>" or "resource:<repository>/<type>/<tag>"')
      .argument('<file>', 'CEL source')
      .addHelpText('after', '\nExample:\n  cloister kbs policy set repository:owner owner-policy.cel'),
  ).action(async (scope: string, file: string, o: Conn) =>
    printJson(
      await call(o, 'PUT', '/admin/v1/policies', {
        json: { scope, source: new TextDecoder().decode(await readSecretFile(file)) },
      }),
    ),
  );
  connOptions(
    policy
      .command('get')
      .description('list the active policies')
      .addHelpText('after', '\nExample:\n  cloister kbs policy get'),
  ).action(async (o: Conn) => printJson(await call(o, 'GET', '/admin/v1/policies')));
  connOptions(
    policy
      .command('eval')
      .description('explain whether an attestation token would be released a resource, and why')
      .argument('<token-file>', 'file holding an EAR token from /kbs/v0/attest')
      .argument('<resource>', '<repository>/<type>/<tag>')
      .addHelpText(
        'after',
        '\nExit status: 0 allowed, 3 denied, 1 error (nothing judged).\n\nExample:\n  cloister kbs policy eval ear.jwt owner/models/kek1',
      ),
  ).action(async (tokenFile: string, resourcePath: string, o: Conn) => {
    const token = new TextDecoder().decode(await readSecretFile(tokenFile)).trim();
    const verdict = await call(o, 'POST', '/admin/v1/policy/evaluate', {
      json: { token, resource: resourcePath },
    });
    printJson(verdict);
    if ((verdict as { allow?: unknown } | undefined)?.allow !== true)
      throw new CommanderError(POLICY_DENIED_STATUS, 'cloister.kbs.policy.denied', '');
  });
  connOptions(
    policy
      .command('rm')
      .description("remove a scope's policy, every version: the next scope's applies again")
      .argument('<scope>', '"default", "repository:<name>" or "resource:<repository>/<type>/<tag>"')
      .addHelpText(
        'after',
        '\nThe policy of a resource is its own, else its repository\'s, else "default", else the built-in one.\n' +
          '\nExample:\n  cloister kbs policy rm resource:acme/models/kek1',
      ),
  ).action(async (scope: string, o: Conn) => {
    const r = (await call(o, 'DELETE', `/admin/v1/policies?scope=${encodeURIComponent(scope)}`)) as {
      deleted: number;
    };
    process.stderr.write(`removed the policy of ${scope} (${r.deleted} version(s))\n`);
  });

  const ref = kbs.command('refvalue').description('reference values used by appraisal and policies');
  connOptions(
    ref
      .command('add')
      .description('add a new version of a reference value')
      .requiredOption('--tee <kind>', 'tdx, sgx, snp, nvidia, …')
      .requiredOption('--name <claim>', 'claim name, e.g. mr_td, measurement, mr_enclave')
      .requiredOption('--value <hex...>', 'acceptable values (lower-case hex)')
      .option('--expires <time>', 'RFC 3339 expiry')
      .option('--note <text>', 'why this value')
      .option('--tenant <name>', 'tenant (admins only; without it the values are operator-wide)')
      .addHelpText(
        'after',
        '\nExample:\n  cloister kbs refvalue add --tee tdx --name mr_td --value 1a2b… --expires 2027-01-01T00:00:00Z',
      ),
  ).action(
    async (
      o: Conn & {
        tee: string;
        name: string;
        value: string[];
        expires?: string;
        note?: string;
        tenant?: string;
      },
    ) =>
      printJson(
        await call(o, 'POST', '/admin/v1/refvalues', {
          json: {
            tee: o.tee,
            name: o.name,
            values: o.value,
            ...(o.expires ? { expiresAt: o.expires } : {}),
            ...(o.note ? { note: o.note } : {}),
            ...(o.tenant ? { tenant: o.tenant } : {}),
          },
        }),
      ),
  );
  connOptions(
    ref
      .command('ls')
      .description('list reference values')
      .option('--tee <kind>', 'only this TEE kind')
      .addHelpText('after', '\nExample:\n  cloister kbs refvalue ls --tee tdx'),
  ).action(async (o: Conn & { tee?: string }) =>
    printJson(await call(o, 'GET', `/admin/v1/refvalues${o.tee ? `?tee=${o.tee}` : ''}`)),
  );
  connOptions(
    ref
      .command('rm')
      .description('remove a set of reference values (one TEE kind and claim), every version')
      .requiredOption('--tee <kind>', 'tdx, sgx, snp, nvidia, …')
      .requiredOption('--name <claim>', 'claim name, e.g. mr_td')
      .option('--tenant <name>', 'tenant (admins only; without it the operator-wide set)')
      .addHelpText(
        'after',
        '\nThe claim is no longer checked for that owner. To go back to earlier values, add them again (a new\n' +
          'version); to accept none, add a version that --expires now.\n' +
          '\nExample:\n  cloister kbs refvalue rm --tee tdx --name mr_td',
      ),
  ).action(async (o: Conn & { tee: string; name: string; tenant?: string }) => {
    const q = new URLSearchParams({ tee: o.tee, name: o.name, ...(o.tenant ? { tenant: o.tenant } : {}) });
    const r = (await call(o, 'DELETE', `/admin/v1/refvalues?${q}`)) as { deleted: number };
    process.stderr.write(`removed reference values ${o.tee}/${o.name} (${r.deleted} version(s))\n`);
  });

  const repository = kbs.command('repository').description('repositories and the tenant that owns each');
  connOptions(
    repository
      .command('assign')
      .description(
        'give a repository, with its resources and policies, to a tenant or the operator (admins only)',
      )
      .argument('<repository>', 'repository name')
      .option('--tenant <name>', 'the new owner')
      .option('--operator', 'the operator is the new owner')
      .option(
        '--outside-namespace',
        "allow an owner the repository's name does not say (acme-… is acme's; see docs/kbs.md)",
      )
      .addHelpText('after', '\nExample:\n  cloister kbs repository assign acme-models --tenant acme'),
  ).action(
    async (name: string, o: Conn & { tenant?: string; operator?: boolean; outsideNamespace?: boolean }) => {
      if ((o.tenant === undefined) === !o.operator)
        throw new FileError('repository assign: give exactly one of --tenant NAME or --operator');
      printJson(
        await call(o, 'PUT', `/admin/v1/repositories/${encodeURIComponent(name)}/owner`, {
          json: { tenant: o.tenant ?? null, ...(o.outsideNamespace ? { outsideNamespace: true } : {}) },
        }),
      );
    },
  );
}
