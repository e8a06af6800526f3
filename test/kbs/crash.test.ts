/**
 * Durability: `cloister kbs serve` (SQLite file) is killed with SIGKILL while admin writes stream in.
 * After a restart on the same database every write the broker acknowledged is there, each has its
 * transparency-log entry, and the exported log verifies with `cloister log verify` run as a process.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BIN, cliTimeouts, cloister } from '../cli/run.js';
import { adminToken, type TestKeys, testKeys } from './helpers.js';

vi.setConfig(cliTimeouts());

interface Served {
  proc: ChildProcess;
  url: string;
  exited: Promise<void>;
}

/** Starts the broker as a user would and reads the URL it prints on stdout. */
function serve(config: string): Promise<Served> {
  const proc = spawn(process.execPath, [BIN, 'kbs', 'serve', '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n');
      if (line.length > 1) resolve({ proc, url: line[0]!.trim(), exited });
    });
    proc.once('exit', (code) => reject(new Error(`kbs serve exited with ${code}: ${stderr}`)));
  });
}

describe('kill -9 during admin writes', () => {
  let keys: TestKeys;
  let config: string;
  const running: ChildProcess[] = [];
  beforeAll(async () => {
    if (!existsSync('dist/cli/kbs.js'))
      execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
    keys = await testKeys();
    config = join(keys.dir, 'kbs.json');
    writeFileSync(
      config,
      JSON.stringify({
        port: 0,
        db: 'sqlite:kbs.db',
        masterKeyFile: keys.masterKeyFile,
        earKeyFile: keys.earKeyFile,
        logKeyFile: keys.logKeyFile,
        adminKeysFile: keys.adminKeysFile,
        rateLimit: { perSecond: 0, burst: 0 },
        checkpointIntervalSeconds: 1,
      }),
    );
  });
  afterAll(() => {
    for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });

  it('keeps every acknowledged write and an unbroken, verifiable log', async () => {
    const first = await serve(config);
    running.push(first.proc);
    const token = await adminToken(keys.adminPrivateKey);
    const acked: { kind: 'resource-put' | 'policy-set'; subject: string }[] = [];
    let killed = false;

    // Four writers in parallel, so writes are in flight when the broker dies.
    const refused: number[] = [];
    let writing = 4;
    const writer = async (w: number) => {
      for (let i = 0; !killed; i++) {
        const put = i % 2 === 0;
        const path = `crash/keys/w${w}-${i}`;
        let r: Response;
        try {
          r = put
            ? await fetch(new URL(`/admin/v1/resources/${path}`, first.url), {
                method: 'PUT',
                headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
                body: new TextEncoder().encode(`value ${w}-${i}`),
              })
            : await fetch(new URL('/admin/v1/policies', first.url), {
                method: 'PUT',
                headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
                body: JSON.stringify({
                  scope: `resource:${path}`,
                  source: `cpu.claims.measurement == "${i}"`,
                }),
              });
        } catch {
          // The connection died with the broker: not acknowledged.
          break;
        }
        if (r.ok)
          acked.push({ kind: put ? 'resource-put' : 'policy-set', subject: put ? path : `resource:${path}` });
        else refused.push(r.status);
      }
      writing--;
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));
    // Kill once a good number of writes went through (polling the acknowledgements, not sleeping).
    while (acked.length < 60 && writing === 4) await new Promise((r) => setImmediate(r));
    expect(writing).toBe(4);
    first.proc.kill('SIGKILL');
    killed = true;
    await first.exited;
    await Promise.all(writers);
    expect(first.proc.signalCode).toBe('SIGKILL');
    expect(refused).toEqual([]);

    const second = await serve(config);
    running.push(second.proc);
    try {
      const get = async (path: string) =>
        (await fetch(new URL(path, second.url), { headers: { authorization: `Bearer ${token}` } })).json();
      const resources = new Set(
        ((await get('/admin/v1/resources')).resources as { path: string }[]).map((r) => r.path),
      );
      const policies = new Set(
        ((await get('/admin/v1/policies')).policies as { scope: { path?: string } }[]).map(
          (p) => `resource:${p.scope.path}`,
        ),
      );
      for (const w of acked) {
        expect(
          w.kind === 'resource-put' ? resources.has(w.subject) : policies.has(w.subject),
          w.subject,
        ).toBe(true);
      }

      const entries = (await get('/admin/v1/log/entries')).entries as { kind: string; subject: string }[];
      const logged = new Set(entries.map((e) => `${e.kind} ${e.subject}`));
      for (const w of acked) expect(logged.has(`${w.kind} ${w.subject}`), w.subject).toBe(true);

      const bundle = await fetch(new URL('/admin/v1/log/bundle', second.url), {
        headers: { authorization: `Bearer ${token}` },
      });
      expect(bundle.status).toBe(200);
      const file = join(keys.dir, 'log.jsonl');
      writeFileSync(file, await bundle.text());
      const verify = cloister(['log', 'verify', file, '--key', keys.logVkey]);
      expect(verify.stderr).toBe('');
      expect(verify.code).toBe(0);
      expect(verify.stdout.toString()).toMatch(/hash chain intact[\s\S]*result: VERIFIED/);
      expect(verify.stdout.toString()).toContain(`(${entries.length}), hash chain intact`);
    } finally {
      second.proc.kill('SIGTERM');
      await second.exited;
    }
  });
});
