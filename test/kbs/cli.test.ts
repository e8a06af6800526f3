/**
 * `cloister kbs …` administration verbs as spawned processes (the built CLI, as an operator runs it)
 * against a broker started in this process: output of each command, and the one-line error when the
 * broker is unreachable or refuses.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { BIN, cliTimeouts, tempDir } from '../cli/run.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

vi.setConfig(cliTimeouts());

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Asynchronous, so the broker in this process keeps answering while the CLI runs. */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CLOISTER_KBS_URL: '', CLOISTER_ADMIN_TOKEN: '', ...env },
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    p.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    p.once('error', reject);
    p.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const ok = (r: Run) => {
  expect(r.stderr).not.toMatch(/^cloister:/m);
  expect(r.code, r.stderr).toBe(0);
  return r;
};

/** A failure: exit 1 and exactly one line on stderr. */
const fails = (r: Run, message: RegExp) => {
  expect(r.code).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  expect(r.stderr).toMatch(message);
};

describe('cloister kbs administration verbs', () => {
  let dir: string;
  let b: TestBroker;
  let admin: string;
  let env: Record<string, string>;
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };

  beforeAll(async () => {
    if (!existsSync('dist/cli/kbs.js'))
      execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
    dir = tempDir();
    const key = await cli([
      'kbs',
      'admin-key',
      '--out',
      join(dir, 'admin.jwk'),
      '--pub',
      join(dir, 'admin.pub.jwk'),
    ]);
    ok(key);
    expect(key.stderr).toMatch(/wrote .*admin\.jwk \(keep secret\) and .*admin\.pub\.jwk/);
    // The broker trusts the public key the CLI just made.
    b = await testBroker({ devMode: true, adminKeysFile: join(dir, 'admin.pub.jwk') });
    const token = ok(await cli(['kbs', 'admin-token', '--key', join(dir, 'admin.jwk'), '--subject', 'ops']));
    admin = token.stdout.trim();
    env = { CLOISTER_KBS_URL: b.url, CLOISTER_ADMIN_TOKEN: admin };
  });
  afterAll(() => b?.close());

  it('admin-key writes a private key readable only by its owner and refuses to overwrite', async () => {
    expect(statSync(join(dir, 'admin.jwk')).mode & 0o777).toBe(0o600);
    const priv = JSON.parse(readFileSync(join(dir, 'admin.jwk'), 'utf8'));
    const pub = JSON.parse(readFileSync(join(dir, 'admin.pub.jwk'), 'utf8'));
    expect(priv).toMatchObject({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA' });
    expect(priv.d).toBeTruthy();
    expect(pub.d).toBeUndefined();
    expect(pub.kid).toBe(priv.kid);
    fails(
      await cli(['kbs', 'admin-key', '--out', join(dir, 'admin.jwk'), '--pub', join(dir, 'x.pub')]),
      /^cloister: .*admin\.jwk/,
    );
  });

  it('admin-token signs tokens with role, tenant and lifetime the broker accepts', async () => {
    const [, payload] = admin.split('.');
    expect(JSON.parse(Buffer.from(payload!, 'base64url').toString())).toMatchObject({
      role: 'admin',
      sub: 'ops',
      aud: 'cloister-kbs-admin',
    });
    const t = ok(
      await cli([
        'kbs',
        'admin-token',
        '--key',
        join(dir, 'admin.jwk'),
        '--role',
        'tenant-admin',
        '--tenant',
        'acme',
        '--ttl',
        '60',
      ]),
    ).stdout.trim();
    const claims = JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString());
    expect(claims).toMatchObject({ role: 'tenant-admin', tenant: 'acme' });
    expect(claims.exp - claims.iat).toBe(60);
    expect((await b.call('GET', '/admin/v1/resources', t)).status).toBe(200);
    const bad = await cli(['kbs', 'admin-token', '--key', join(dir, 'admin.jwk'), '--role', 'root']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toMatch(/Allowed choices are admin, tenant-admin, auditor/);
    fails(await cli(['kbs', 'admin-token', '--key', join(dir, 'admin.pub.jwk')]), /is not a private key/);
  });

  it('admin-token refuses reserved tenant names and role/tenant mismatches, and prints the token id', async () => {
    const key = join(dir, 'admin.jwk');
    for (const [args, why] of [
      [['--role', 'tenant-admin', '--tenant', 'default'], /tenant name "default" is reserved/],
      [['--role', 'tenant-admin', '--tenant', '*'], /tenant name "\*" must match/],
      [['--role', 'tenant-admin', '--tenant', ''], /tenant name "" must match/],
      [['--role', 'tenant-admin'], /a tenant-admin token needs a tenant claim/],
      [['--role', 'auditor'], /an auditor token needs a tenant claim/],
      [['--role', 'admin', '--tenant', 'acme'], /carries no tenant claim/],
      [['--ttl', '1h'], /--ttl 1h: give the lifetime in whole seconds/],
    ] as [string[], RegExp][]) {
      fails(await cli(['kbs', 'admin-token', '--key', key, ...args]), why);
    }
    const r = ok(await cli(['kbs', 'admin-token', '--key', key, '--role', 'auditor', '--tenant', 'acme']));
    const claims = JSON.parse(Buffer.from(r.stdout.trim().split('.')[1]!, 'base64url').toString());
    expect(r.stderr).toMatch(new RegExp(`^token id ${claims.jti}, expires \\d{4}-`));
  });

  it('token revoke (by id or by token) | ls, after which the broker refuses the token', async () => {
    const key = join(dir, 'admin.jwk');
    const mint = async () =>
      ok(await cli(['kbs', 'admin-token', '--key', key, '--ttl', '600'])).stdout.trim();
    const [byToken, byId] = [await mint(), await mint()];
    const idOf = (t: string) =>
      JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString()).jti as string;
    const rec = JSON.parse(
      ok(await cli(['kbs', 'token', 'revoke', byToken, '--reason', 'leaked'], env)).stdout,
    );
    expect(rec).toMatchObject({ tokenId: idOf(byToken), reason: 'leaked', actor: 'admin:ops' });
    expect(rec.expiresAt).toMatch(/^\d{4}-/);
    ok(await cli(['kbs', 'token', 'revoke', idOf(byId)], env));
    for (const t of [byToken, byId])
      fails(
        await cli(['kbs', 'resource', 'ls'], { ...env, CLOISTER_ADMIN_TOKEN: t }),
        /401 admin token .* has been revoked/,
      );
    const listed = JSON.parse(ok(await cli(['kbs', 'token', 'ls'], env)).stdout).revoked;
    expect(listed.map((x: { tokenId: string }) => x.tokenId)).toEqual(
      expect.arrayContaining([idOf(byToken), idOf(byId)]),
    );
    fails(await cli(['kbs', 'token', 'revoke', 'a.b.c'], env), /^cloister: not a token/);
  });

  it('resource put | ls | rotate | rm, and the TEE sees each change', async () => {
    const put = ok(
      await cli(
        [
          'kbs',
          'resource',
          'put',
          'owner/models/kek1',
          file('v1', 'first value'),
          '--content-type',
          'text/plain',
        ],
        env,
      ),
    );
    expect(JSON.parse(put.stdout)).toMatchObject({
      path: 'owner/models/kek1',
      version: 1,
      size: 11,
      contentType: 'text/plain',
      // The repository name is in tenant owner's namespace, so an admin creates it for owner.
      tenant: 'owner',
    });
    const ls = JSON.parse(ok(await cli(['kbs', 'resource', 'ls'], env)).stdout);
    expect(ls.resources.map((r: { path: string }) => r.path)).toEqual(['owner/models/kek1']);
    expect(JSON.stringify(ls)).not.toContain('first value');

    const client = async () => new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(new TextDecoder().decode(await (await client()).getResource('owner/models/kek1'))).toBe(
      'first value',
    );
    const rot = ok(await cli(['kbs', 'resource', 'rotate', 'owner/models/kek1', file('v2', 'second')], env));
    expect(JSON.parse(rot.stdout)).toMatchObject({ version: 2, size: 6 });
    expect(new TextDecoder().decode(await (await client()).getResource('owner/models/kek1'))).toBe('second');

    const rm = ok(await cli(['kbs', 'resource', 'rm', 'owner/models/kek1'], env));
    expect(rm.stdout).toBe('');
    expect(rm.stderr).toBe('deleted owner/models/kek1\n');
    await expect((await client()).getResource('owner/models/kek1')).rejects.toMatchObject({ status: 403 });
    fails(
      await cli(['kbs', 'resource', 'rm', 'owner/models/kek1'], env),
      /^cloister: DELETE \/admin\/v1\/resources\/owner\/models\/kek1: 404 resource owner\/models\/kek1 does not exist$/m,
    );
    fails(
      await cli(['kbs', 'resource', 'put', 'owner/models/x', join(dir, 'missing')], env),
      /^cloister: cannot read .*missing: ENOENT$/m,
    );
  });

  it('policy set | get | eval', async () => {
    ok(await cli(['kbs', 'resource', 'put', 'owner/models/p', file('p', 'policy value')], env));
    const set = ok(
      await cli(
        [
          'kbs',
          'policy',
          'set',
          'resource:owner/models/p',
          file('p.cel', 'dev_mode && cpu.claims.measurement == "00"'),
        ],
        env,
      ),
    );
    expect(JSON.parse(set.stdout)).toMatchObject({
      version: 1,
      scope: { kind: 'resource', path: 'owner/models/p' },
    });
    const get = JSON.parse(ok(await cli(['kbs', 'policy', 'get'], env)).stdout);
    expect(get.policies).toHaveLength(1);
    expect(get.policies[0].source).toBe('dev_mode && cpu.claims.measurement == "00"');

    const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
    const tokenFile = file('ear.jwt', `${token}\n`);
    // Denied: the verdict on stdout, exit 3 (the shared convention: a verdict that says no).
    const denied = await cli(['kbs', 'policy', 'eval', tokenFile, 'owner/models/p'], env);
    expect([denied.code, denied.stderr]).toEqual([3, '']);
    const deny = JSON.parse(denied.stdout);
    expect(deny).toMatchObject({ allow: false, policyScope: 'resource:owner/models/p' });
    expect(deny.clauses).toEqual([
      { source: 'dev_mode', outcome: 'true' },
      { source: 'cpu.claims.measurement == "00"', outcome: 'false' },
    ]);
    ok(await cli(['kbs', 'policy', 'set', 'resource:owner/models/p', file('p2.cel', 'dev_mode')], env));
    const allow = JSON.parse(
      ok(await cli(['kbs', 'policy', 'eval', tokenFile, 'owner/models/p'], env)).stdout,
    );
    expect(allow).toMatchObject({ allow: true, reasons: [] });

    fails(
      await cli(['kbs', 'policy', 'set', 'default', file('bad.cel', 'cpu.claims.measurement ==')], env),
      /^cloister: PUT \/admin\/v1\/policies: 400 policy-syntax at line 1, column \d+/,
    );
  });

  it('refvalue add | ls', async () => {
    const add = ok(
      await cli(
        [
          'kbs',
          'refvalue',
          'add',
          '--tee',
          'sample',
          '--name',
          'measurement',
          '--value',
          '00'.repeat(48),
          'ab'.repeat(48),
          '--expires',
          '2099-01-01T00:00:00Z',
          '--note',
          'build 7',
          '--tenant',
          'acme',
        ],
        env,
      ),
    );
    expect(JSON.parse(add.stdout)).toMatchObject({
      tenant: 'acme',
      tee: 'sample',
      name: 'measurement',
      values: ['00'.repeat(48), 'ab'.repeat(48)],
      version: 1,
      expiresAt: '2099-01-01T00:00:00.000Z',
      note: 'build 7',
    });
    const ls = JSON.parse(ok(await cli(['kbs', 'refvalue', 'ls', '--tee', 'sample'], env)).stdout);
    expect(ls.refvalues).toHaveLength(1);
    expect(
      JSON.parse(ok(await cli(['kbs', 'refvalue', 'ls', '--tee', 'tdx'], env)).stdout).refvalues,
    ).toEqual([]);
    fails(
      await cli(['kbs', 'refvalue', 'add', '--tee', 'sample', '--name', 'm', '--value', 'XYZ'], env),
      /^cloister: POST \/admin\/v1\/refvalues: 400 send \{"tee"/,
    );
  });

  it('fails with one line when the broker is unreachable, refuses, or no token is given', async () => {
    // A port nobody listens on: taken from the OS, then released.
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as AddressInfo).port;
    await new Promise((r) => srv.close(r));
    fails(
      await cli(['kbs', 'resource', 'ls', '--url', `http://127.0.0.1:${port}`, '--token', admin]),
      new RegExp(`^cloister: cannot reach the key broker at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
    );
    fails(
      await cli(['kbs', 'resource', 'ls', '--url', b.url]),
      /^cloister: no admin token: pass --token or set CLOISTER_ADMIN_TOKEN$/m,
    );
    const auditor = ok(
      await cli(['kbs', 'admin-token', '--key', join(dir, 'admin.jwk'), '--role', 'global-auditor']),
    ).stdout.trim();
    fails(
      await cli(['kbs', 'resource', 'put', 'owner/models/y', file('y', 'y')], {
        ...env,
        CLOISTER_ADMIN_TOKEN: auditor,
      }),
      /^cloister: PUT \/admin\/v1\/resources\/owner\/models\/y: 403 auditors cannot change anything$/m,
    );
    fails(
      await cli(['kbs', 'resource', 'ls'], { ...env, CLOISTER_ADMIN_TOKEN: `${admin}x` }),
      /^cloister: GET \/admin\/v1\/resources: 401 admin token refused: /,
    );
  });
  it('keygen --ear / --master write the broker keys; keys --config reads them offline', async () => {
    const ear = join(dir, 'ear.jwk');
    const pub = join(dir, 'ear.pub.jwk');
    const master = join(dir, 'master.key');
    ok(await cli(['kbs', 'keygen', '--ear', ear, '--pub', pub]));
    ok(await cli(['kbs', 'keygen', '--master', master]));
    for (const f of [ear, master]) expect(statSync(f).mode & 0o777).toBe(0o600);
    const priv = JSON.parse(readFileSync(ear, 'utf8'));
    const pubJwk = JSON.parse(readFileSync(pub, 'utf8'));
    expect(priv).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', kid: pubJwk.kid });
    expect(pubJwk.d).toBeUndefined();
    expect(Buffer.from(readFileSync(master, 'utf8').trim(), 'base64')).toHaveLength(32);
    // Never overwritten without --force; with it, a new key.
    fails(await cli(['kbs', 'keygen', '--master', master]), /master\.key/);
    ok(await cli(['kbs', 'keygen', '--master', master, '--force']));
    fails(await cli(['kbs', 'keygen']), /give exactly one of --ear FILE \[--pub FILE\] or --master FILE/);

    const vkey = ok(
      await cli(['log', 'keygen', '--name', 'kbs.example/log', '--out', join(dir, 'log.jwk')]),
    ).stdout.trim();
    const config = file(
      'kbs.json',
      JSON.stringify({ earKeyFile: 'ear.jwk', logKeyFile: 'log.jwk', logOrigin: 'kbs.example/log' }),
    );
    const out = join(dir, 'ear-offline.pub.jwk');
    const keys = ok(await cli(['kbs', 'keys', '--config', config, '--ear-out', out]));
    expect(keys.stdout).toBe(`${vkey}\n`);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual(pubJwk);
    fails(
      await cli(['kbs', 'keys', '--config', file('nokeys.json', '{}')]),
      /no earKeyFile or logKeyFile: such a broker makes its key at start/,
    );
  });

  it('keys --url saves the EAR key that verify-receipt and chat take, and prints the log key', async () => {
    const out = join(dir, 'broker-ear.pub.jwk');
    const keys = ok(await cli(['kbs', 'keys', '--ear-out', out], env));
    expect(keys.stdout).toBe(`${b.logVerifierKey}\n`);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual(b.earPublicJwk);
    const token = await new KbsClient({ url: b.url, attester: await sampleAttester() }).token();
    const { verifyEar } = await import('../../src/attest/index.js');
    await expect(verifyEar(token, JSON.parse(readFileSync(out, 'utf8')))).resolves.toBeTruthy();
  });

  it('resource put refuses a key whose kid names another resource, naming both', async () => {
    const kek = join(dir, 'owner.kek');
    ok(await cli(['keygen', '--kek', kek, '--uri', 'kbs:///owner/models/kek1']));
    fails(
      await cli(['kbs', 'resource', 'put', 'acme/models/kek1', kek], env),
      /^cloister: .*owner\.kek is the key kbs:\/\/\/owner\/models\/kek1 \(its kid\), not kbs:\/\/\/acme\/models\/kek1: store it as owner\/models\/kek1, or make a key for this name with cloister keygen --kek FILE --uri kbs:\/\/\/acme\/models\/kek1$/m,
    );
    ok(await cli(['kbs', 'resource', 'put', 'owner/models/kek1', kek], env));
  });

  it('policy rm, refvalue rm and repository assign', async () => {
    ok(await cli(['kbs', 'resource', 'put', 'acme-x/models/a', file('a', 'a')], env));
    ok(await cli(['kbs', 'policy', 'set', 'repository:acme-x', file('t.cel', 'true')], env));
    const rm = ok(await cli(['kbs', 'policy', 'rm', 'repository:acme-x'], env));
    expect(rm.stderr).toBe('removed the policy of repository:acme-x (1 version(s))\n');
    fails(
      await cli(['kbs', 'policy', 'rm', 'repository:acme-x'], env),
      /404 no policy is set for scope repository:acme-x$/m,
    );
    ok(await cli(['kbs', 'refvalue', 'add', '--tee', 'snp', '--name', 'measurement', '--value', 'ab'], env));
    ok(await cli(['kbs', 'refvalue', 'rm', '--tee', 'snp', '--name', 'measurement'], env));
    fails(
      await cli(['kbs', 'refvalue', 'rm', '--tee', 'snp', '--name', 'measurement'], env),
      /404 no reference values snp\/measurement operator-wide$/m,
    );
    fails(
      await cli(['kbs', 'repository', 'assign', 'acme-x', '--tenant', 'bigcorp'], env),
      /400 repository acme-x is in tenant acme's namespace; giving it to tenant bigcorp/,
    );
    fails(
      await cli(['kbs', 'repository', 'assign', 'acme-x'], env),
      /give exactly one of --tenant NAME or --operator/,
    );
    const moved = ok(
      await cli(['kbs', 'repository', 'assign', 'acme-x', '--operator', '--outside-namespace'], env),
    );
    expect(JSON.parse(moved.stdout)).toEqual({ repository: 'acme-x', from: 'acme', to: null });
  });

  it('log export writes a bundle that verifies; a tenant token gets one line and no file', async () => {
    const bundle = join(dir, 'log.jsonl');
    ok(await cli(['log', 'export', '--out', bundle, '--proofs', 'all'], env));
    const verified = ok(await cli(['log', 'verify', bundle, '--key', b.logVerifierKey]));
    expect(verified.stdout).toMatch(/result: VERIFIED/);
    const stdout = ok(await cli(['log', 'export'], env)).stdout;
    expect(stdout.split('\n')[0]).toMatch(/^\{"type":/);
    const tenant = ok(
      await cli([
        'kbs',
        'admin-token',
        '--key',
        join(dir, 'admin.jwk'),
        '--role',
        'tenant-admin',
        '--tenant',
        'acme',
      ]),
    ).stdout.trim();
    const refused = join(dir, 'refused.jsonl');
    const r = await cli(['log', 'export', '--out', refused], { ...env, CLOISTER_ADMIN_TOKEN: tenant });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^cloister log export: the broker refused this token \(403: the log holds every tenant: it is read by admins and global auditors\): the log is exported with an admin or global-auditor token \(cloister kbs admin-token --role global-auditor\)\n$/,
    );
    expect(existsSync(refused)).toBe(false);
  });
});
