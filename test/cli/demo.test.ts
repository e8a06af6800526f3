import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it, vi } from 'vitest';
import { REPLAY } from '../../src/cli/demo.js';
import { cliTimeouts, cloister } from './run.js';

vi.setConfig(cliTimeouts());

it('cloister demo: broker, sealed model, attested run, a policy refusal, confidential inference and the log verifying', () => {
  const r = cloister(['demo']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = r.stdout.toString();
  expect(out).toMatch(/DEV MODE IS ON/);
  expect(out).toMatch(/key released for .*model\.sealed/);
  expect(out).toMatch(/\[workload\] model 512x512 loaded from \/dev\/shm\//);
  expect(out).toMatch(/the owner unseals the result with its key: norm (\d\.\d+)/);
  expect(out).toMatch(/refused \(exit 1\); nothing was unsealed/);
  expect(out).toMatch(/release of owner\/datasets\/kek1 denied: .*cpu\.kind == "tdx"/);
  expect(out).toMatch(/model {7}tiny-llama {2}sha256:[0-9a-f]{64} {2}\(gguf\)/);
  expect(out).toMatch(/key broker {2}its EAR token verifies and describes the same TEE/);
  expect(out).toMatch(/chat through Oblivious HTTP: "Hello, who are you\?" → "[^"]+"/);
  expect(out).toMatch(
    /1 encrypted request\(s\) of \d+ bytes; a plaintext \/v1 request gets 403 \(plaintext_disabled\)/,
  );
  expect(out).toMatch(
    /a client with the default policy refuses, sending nothing: the server runs in a 'sample' TEE/,
  );
  expect(out).toMatch(/transparency log verified offline: .*2 release, 1 denial/);
  expect(out).toMatch(/demo complete in \d+\.\d s/);
});

/** Every file a shell line names (by the suffixes the demo's files have), in order. */
function filesNamed(line: string): string[] {
  return [
    ...line.matchAll(
      /(?:^|[\s=:>@])([\w./-]+\.(?:jwk|kek|cel|sealed|json|jsonl|cjs|key|vkey|gguf|db|url|log))\b/g,
    ),
  ].map((m) => m[1]!);
}

it('cloister demo --keep --show-commands: every key, policy and the log are kept, and replay.sh names only them', () => {
  const r = cloister(['demo', '--keep', '--show-commands']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = r.stdout.toString();
  const dir = /files kept in (\S+): /.exec(out)?.[1];
  if (!dir) throw new Error(`no kept directory in:\n${out}`);
  try {
    // The commands are shown under their steps, the same as replay.sh holds.
    expect(out).toContain(
      '\n4. policies set: model key → the approved measurement only; dataset key → Intel TDX only\n   $ cloister kbs policy set resource:owner/models/kek1 model-policy.cel\n',
    );
    expect(out).toMatch(
      /\n8\. transparency log verified offline: .*\n {3}\$ cloister log verify log\.jsonl --key-file log\.vkey\n/,
    );
    const kept = readdirSync(dir);
    for (const f of [
      'admin.jwk',
      'admin.pub.jwk',
      'ear.jwk',
      'ear.pub.jwk',
      'log.jwk',
      'log.vkey',
      'master.key',
      'kbs.json',
      'model.kek',
      'dataset.kek',
      'llm.kek',
      'model-policy.cel',
      'dataset-policy.cel',
      'model.sealed',
      'tiny-llama.gguf.sealed',
      'workload.cjs',
      'log.jsonl',
      'replay.sh',
    ])
      expect(kept).toContain(f);
    // Private keys are the user's alone.
    for (const f of ['admin.jwk', 'ear.jwk', 'log.jwk', 'master.key', 'model.kek', 'dataset.kek', 'llm.kek'])
      expect(statSync(join(dir, f)).mode & 0o077, f).toBe(0);
    expect(readFileSync(join(dir, 'model-policy.cel'), 'utf8')).toMatch(
      /cpu\.claims\.measurement == "0{96}"/,
    );
    expect(readFileSync(join(dir, 'log.jsonl'), 'utf8')).toMatch(/"kind":"denial"/);

    const script = readFileSync(join(dir, 'replay.sh'), 'utf8');
    const commands = script.split('\n').filter((l) => l.trim() && !l.trim().startsWith('#'));
    expect(commands.filter((l) => l.startsWith('cloister ')).length).toBeGreaterThan(15);
    for (const step of REPLAY) for (const c of step) expect(script).toContain(`${c}\n`);
    // Each file a command reads is one the demo kept; what the replay writes goes under replay/.
    const named = commands.flatMap(filesNamed).filter((f) => !f.startsWith('replay/'));
    expect(named.length).toBeGreaterThan(10);
    expect(named.filter((f) => !kept.includes(f))).toEqual([]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
