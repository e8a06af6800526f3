import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { formatBundle } from '../../src/translog/bundle.js';
import { generateNoteSigner, signerFromJwk } from '../../src/translog/note.js';
import { MemoryLogStore, TransparencyLog } from '../../src/translog/store.js';
import { cliTimeouts, cloister, tempDir } from '../cli/run.js';

vi.setConfig(cliTimeouts());

// The CLI as users run it: `node bin/cloister.js` over dist/ (`npm test` builds first).
let dir: string;
let vkey: string;
let good: string;
let streamed: string;

beforeAll(async () => {
  if (!existsSync('dist/cli/log.js'))
    execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  dir = tempDir();
  const keygen = cloister(['log', 'keygen', '--name', 'broker.example/log', '--out', join(dir, 'log.jwk')]);
  expect(keygen.stderr).toBe('');
  expect(keygen.code).toBe(0);
  vkey = keygen.stdout.toString().trim();
  writeFileSync(join(dir, 'log.vkey'), `${vkey}\n`);
  const signer = await signerFromJwk(JSON.parse(readFileSync(join(dir, 'log.jwk'), 'utf8')));
  const store = new MemoryLogStore();
  for (let b = 0; b < 3; b++) {
    await store.append(
      Array.from({ length: 4 }, (_, i) => ({
        kind: 'release',
        tenant: 'acme',
        actor: `tee-${b}-${i}`,
        subject: 'kbs:///acme/m/k',
        details: { b, i },
      })),
      { signer },
    );
  }
  streamed = '';
  for await (const c of new TransparencyLog(store, signer.name).exportLines({
    inclusion: 'all',
    consistency: true,
  }))
    streamed += c;
  good = join(dir, 'good.jsonl');
  writeFileSync(
    good,
    formatBundle(await new TransparencyLog(store, signer.name).export({ inclusion: [3], consistency: true })),
  );
});

describe('cloister log', () => {
  it('keygen writes a private JWK readable only by its owner, and refuses to overwrite it', () => {
    expect(vkey).toMatch(/^broker\.example\/log\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*$/);
    expect(statSync(join(dir, 'log.jwk')).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(join(dir, 'log.jwk'), 'utf8'))).toMatchObject({
      kty: 'OKP',
      crv: 'Ed25519',
      kid: 'broker.example/log',
    });
    const again = cloister(['log', 'keygen', '--name', 'x', '--out', join(dir, 'log.jwk')]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/cannot write .*log\.jwk/);
  });

  it('verify exits 0 and summarises a good bundle (--key and --key-file)', () => {
    const r = cloister(['log', 'verify', good, '--key', vkey]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = r.stdout.toString();
    expect(out).toMatch(/entries: 0…11 \(12\), hash chain intact/);
    expect(out).toMatch(/checkpoints: 3 signed/);
    expect(out).toMatch(/proofs: 1 inclusion, 2 consistency verified/);
    expect(out).toMatch(/result: VERIFIED/);
    expect(cloister(['log', 'verify', good, '--key-file', join(dir, 'log.vkey')]).code).toBe(0);
    const json = JSON.parse(cloister(['log', 'verify', good, '--key', vkey, '--json']).stdout.toString());
    expect(json).toMatchObject({ ok: true, errors: [] });
  });

  it('verify reads a streamed bundle from standard input with -', () => {
    const r = cloister(['log', 'verify', '-', '--key', vkey], { input: new TextEncoder().encode(streamed) });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toMatch(/proofs: 12 inclusion, 2 consistency verified/);
    const cut = streamed.slice(0, streamed.lastIndexOf('{"type":"entry"'));
    const bad = cloister(['log', 'verify', '-', '--key', vkey], { input: new TextEncoder().encode(cut) });
    expect(bad.code).toBe(3);
    expect(bad.stderr).toMatch(
      /FAILED \[bad-bundle\] the header announces entries 0…11 \(12\) but the bundle holds 11/,
    );
  });

  it('verify exits 3 (does not verify) with one line naming the first problem, and lists all with --json', () => {
    const lines = readFileSync(good, 'utf8').split('\n');
    const i = lines.findIndex((l) => l.includes('"actor":"tee-1-1"'));
    lines[i] = lines[i]!.replace('tee-1-1', 'tee-1-X');
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, lines.join('\n'));
    const r = cloister(['log', 'verify', bad, '--key', vkey]);
    expect(r.code).toBe(3);
    expect(r.stdout.toString()).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^cloister log verify: FAILED \[chain-broken\] entry 6: prevHash .* \(and \d+ more problem/,
    );
    const json = JSON.parse(cloister(['log', 'verify', bad, '--key', vkey, '--json']).stdout.toString());
    expect(json.ok).toBe(false);
    expect(json.errors.map((e: { code: string }) => e.code)).toContain('root-mismatch');
  });

  it('verify refuses a missing key (64), a malformed key and an unreadable file (1), in one line each', () => {
    const none = cloister(['log', 'verify', good]);
    expect(none.code).toBe(64);
    expect(none.stderr).toMatch(/--key VKEY or --key-file FILE/);
    const badKey = cloister(['log', 'verify', good, '--key', 'broker.example/log+00000000+AAAA']);
    expect(badKey.code).toBe(1);
    expect(badKey.stderr).toMatch(/FAILED \[bad-key\]/);
    const missing = cloister(['log', 'verify', join(dir, 'nope.jsonl'), '--key', vkey]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/cannot read bundle .*nope\.jsonl/);
  });

  it('verify trusts every key given: a bundle across a log-key rotation needs the old and the new', async () => {
    // The broker's log key replaced (same name, new key) after the first checkpoint.
    const [a, b] = [
      await generateNoteSigner('broker.example/log'),
      await generateNoteSigner('broker.example/log'),
    ];
    const store = new MemoryLogStore();
    for (const jwk of [a.jwk, b.jwk, b.jwk])
      await store.append([{ kind: 'release', tenant: 'acme', actor: 'tee', subject: 's', details: {} }], {
        signer: await signerFromJwk(jwk),
      });
    const rotated = join(dir, 'rotated.jsonl');
    writeFileSync(
      rotated,
      formatBundle(await new TransparencyLog(store, 'broker.example/log').export({ consistency: true })),
    );
    const oldOnly = cloister(['log', 'verify', rotated, '--key', a.vkey]);
    expect(oldOnly.code).toBe(3);
    expect(oldOnly.stderr).toMatch(/FAILED \[unknown-key\] checkpoint 2/);
    expect(cloister(['log', 'verify', rotated, '--key', a.vkey, '--key', b.vkey]).code).toBe(0);
    writeFileSync(join(dir, 'both.vkey'), `${a.vkey}\n${b.vkey}\n`);
    expect(cloister(['log', 'verify', rotated, '--key-file', join(dir, 'both.vkey')]).code).toBe(0);
  });

  it('--help shows an example', () => {
    const r = cloister(['log', 'verify', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toMatch(/Example:\n\s+cloister log verify kbs-log\.jsonl --key/);
  });
});
