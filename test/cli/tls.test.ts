/**
 * The TLS flags as an operator uses them, on the built CLI: `kbs serve` over HTTPS from its config,
 * admin verbs trusting its CA through `--cacert` or CLOISTER_CACERT, and the one-line refusals
 * (plain HTTP off loopback, a port in use, a CA file that is not there) of every verb given the flags.
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { generateKek, kekToJwk } from '../../src/seal/keys.js';
import { tlsFiles } from '../http/certs.js';
import { adminToken, testKeys } from '../kbs/helpers.js';
import { BIN, cliTimeout, cliTimeouts } from './run.js';

vi.setConfig(cliTimeouts());

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CLOISTER_KBS_URL: '', CLOISTER_ADMIN_TOKEN: '', CLOISTER_CACERT: '', ...env },
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

/** Exit 1 and one line on stderr: `message`, or a line it matches. */
function fails(r: Run, message: RegExp | string, status = 1): void {
  expect(r.code, r.stderr).toBe(status);
  expect(r.stderr.split('\n').filter(Boolean)).toEqual([
    typeof message === 'string' ? message : expect.stringMatching(message),
  ]);
}

let files: Awaited<ReturnType<typeof tlsFiles>>;
let broker: ChildProcessWithoutNullStreams | undefined;
let url = '';
let token = '';

beforeAll(async () => {
  if (!existsSync('dist/cli/tls.js'))
    execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  files = await tlsFiles();
  const keys = await testKeys();
  token = await adminToken(keys.adminPrivateKey);
  // Relative paths in the config are the config's folder's: the TLS files sit beside it.
  const config = join(files.dir, 'kbs.json');
  writeFileSync(
    config,
    JSON.stringify({
      port: 0,
      db: 'memory:',
      devMode: true,
      adminKeysFile: keys.adminKeysFile,
      tls: { certFile: 'cert.pem', keyFile: 'key.pem' },
    }),
  );
  broker = spawn(process.execPath, [BIN, 'kbs', 'serve', '--config', config], { stdio: 'pipe' });
  url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('the broker printed no URL')), cliTimeout(30_000));
    broker!.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve(out.trim());
      }
    });
    broker!.once('exit', (code) => reject(new Error(`the broker exited (${code})`)));
  });
});
afterAll(() => {
  broker?.kill('SIGTERM');
});

describe('kbs serve over HTTPS and the admin verbs', () => {
  it('prints an https:// URL', () => {
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  });

  it('admin verbs reach it with --cacert, or with CLOISTER_CACERT', async () => {
    const withFlag = await cli([
      'kbs',
      'resource',
      'ls',
      '--url',
      url,
      '--token',
      token,
      '--cacert',
      files.caFile,
    ]);
    expect(withFlag.code, withFlag.stderr).toBe(0);
    expect(JSON.parse(withFlag.stdout)).toEqual(expect.anything());
    const withEnv = await cli(['kbs', 'resource', 'ls', '--url', url, '--token', token], {
      CLOISTER_CACERT: files.caFile,
    });
    expect(withEnv.code, withEnv.stderr).toBe(0);
  });

  it('kbs keys fetches the public keys with --cacert or CLOISTER_CACERT, and without the CA says how', async () => {
    const withFlag = await cli(['kbs', 'keys', '--url', url, '--cacert', files.caFile]);
    expect(withFlag.code, withFlag.stderr).toBe(0);
    expect(withFlag.stdout).toMatch(/^\S+\+[0-9a-f]{8}\+\S+\n$/);
    const withEnv = await cli(['kbs', 'keys', '--url', url], { CLOISTER_CACERT: files.caFile });
    expect(withEnv.code, withEnv.stderr).toBe(0);
    expect(withEnv.stdout).toBe(withFlag.stdout);
    fails(
      await cli(['kbs', 'keys', '--url', url]),
      /^cloister: cannot reach the key broker at https:.*TLS certificate not trusted.*--cacert FILE/,
    );
  });

  it('log export reaches it with --cacert', async () => {
    const out = join(files.dir, 'log.jsonl');
    const r = await cli([
      'log',
      'export',
      '--url',
      url,
      '--token',
      token,
      '--cacert',
      files.caFile,
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toMatch(/^\{/);
  });

  it('without the CA an admin verb fails in one line saying how to trust it', async () => {
    fails(
      await cli(['kbs', 'resource', 'ls', '--url', url, '--token', token]),
      /^cloister: cannot reach the key broker at https:.*TLS certificate not trusted.*--cacert FILE/,
    );
  });

  it('a missing CA file is one line naming it', async () => {
    const missing = join(files.dir, 'missing-ca.pem');
    fails(
      await cli(['kbs', 'resource', 'ls', '--url', url, '--token', token, '--cacert', missing]),
      `cloister: ${missing}: cannot read the CA file (--cacert or CLOISTER_CACERT): ENOENT`,
    );
  });
});

describe('the one-line refusals', () => {
  it('kbs serve refuses plain HTTP off loopback, and --tls-cert without --tls-key', async () => {
    fails(
      await cli(['kbs', 'serve', '--dev', '--db', 'memory:', '--host', '0.0.0.0', '--port', '0']),
      /^cloister: refusing plain HTTP on 0\.0\.0\.0:0 \(not loopback\): give --tls-cert FILE --tls-key FILE, or --insecure-http/,
    );
    fails(
      await cli(['kbs', 'serve', '--dev', '--db', 'memory:', '--tls-cert', files.certFile]),
      'cloister: give --tls-cert FILE and --tls-key FILE together',
      64, // a usage error (README, Exit status)
    );
  });

  it('serve refuses plain HTTP off loopback and a port in use before it loads a model', async () => {
    const kek = join(files.dir, 'model.kek.jwk');
    writeFileSync(kek, JSON.stringify(kekToJwk(generateKek())));
    // The model does not exist: a refusal that names it would mean the checks came too late.
    const base = ['serve', '--tee', 'sample', '--key', kek, '--model', join(files.dir, 'none.sealed')];
    const open = await cli([...base, '--host', '0.0.0.0']);
    expect(open.code).toBe(1);
    expect(open.stderr).toMatch(/^cloister: refusing plain HTTP on 0\.0\.0\.0:8443 \(not loopback\)/m);
    expect(open.stderr).not.toContain('none.sealed');
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as { port: number }).port;
    try {
      const r = await cli([...base, '--port', String(port)]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`cloister: cannot listen on 127.0.0.1:${port}: the port is in use`);
      expect(r.stderr).not.toContain('none.sealed');
    } finally {
      await new Promise((r) => taken.close(r));
    }
  });

  it('run, agent serve and chat take --cacert and name a missing file', async () => {
    const missing = join(files.dir, 'nope.pem');
    const line = `cloister: ${missing}: cannot read the CA file (--cacert or CLOISTER_CACERT): ENOENT`;
    fails(await cli(['run', '--tee', 'sample', '--kbs', url, '--cacert', missing, '--', 'true']), line);
    const agent = await cli(
      ['agent', 'serve', '--tee', 'sample', '--kbs', url, '--socket', join(files.dir, 'a.sock')],
      { CLOISTER_CACERT: missing },
    );
    expect(agent.code).toBe(1);
    expect(agent.stderr).toContain(line);
    fails(await cli(['chat', '--url', url, '--allow-sample', '--prompt', 'hi', '--cacert', missing]), line);
  });
});
