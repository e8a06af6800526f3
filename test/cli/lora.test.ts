/**
 * `cloister lora convert` from the command line: the job file it writes (what the init-data and the
 * receipt name) and its refusals. The job run itself: test/train/lora-convert-job.test.ts.
 */
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { generateKek } from '../../src/seal/keys.js';
import { sealFile } from '../../src/seal/node.js';
import { BIN, cliTimeouts, cloister, tempDir } from './run.js';

vi.setConfig(cliTimeouts());

const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function sealed(name: string, text: string): Promise<string> {
  const plain = join(dir, name);
  writeFileSync(plain, text);
  await sealFile(plain, `${plain}.sealed`, {
    recipients: [{ type: 'kbs', uri: 'kbs:///owner/files/key', kek: generateKek().secret }],
  });
  return `${plain}.sealed`;
}

it('writes the lora-convert job and prints the init-data a TEE for it needs', async () => {
  expect(BIN).toMatch(/cloister\.js$/);
  const base = await sealed('base.gguf', 'base');
  const adapter = await sealed('adapter_model.safetensors', 'adapter');
  const config = await sealed('adapter_config.json', '{}');
  const out = join(dir, 'out');
  const r = cloister([
    'lora',
    'convert',
    '--base',
    base,
    '--adapter',
    adapter,
    '--config',
    config,
    '--to',
    'kbs:///company/adapters/key',
    '--out',
    out,
    '--kbs',
    'http://127.0.0.1:9',
    '--print-init-data',
  ]);
  expect(r.stderr).toMatch(/^job [0-9a-f]{64} \(/);
  expect(r.code).toBe(0);
  const jobBytes = readFileSync(join(out, 'lora-convert.json'));
  const job = JSON.parse(jobBytes.toString());
  expect(job).toEqual({
    version: 1,
    name: 'lora-convert',
    base: { path: base, sha256: sha(base) },
    trainer: { builtin: 'lora-convert' },
    inputs: [
      { name: 'adapter', path: adapter, sha256: sha(adapter) },
      { name: 'config', path: config, sha256: sha(config) },
    ],
    hyperparameters: {},
    seed: 0,
    outputs: { recipients: ['kbs:///company/adapters/key'] },
    checkpoints: { everySteps: 0, everyMinutes: 0, dir: '.' },
  });
  const init = JSON.parse(r.stdout.toString()).data;
  expect(init['cloister.train.manifest']).toBe(createHash('sha256').update(jobBytes).digest('hex'));
  expect(init['cloister.train.base']).toBe(sha(base));
  expect(init['cloister.train.outputs']).toBe('adapter');
});

it('refuses a --to that is not a key-broker key, a missing flag, a missing file', () => {
  const f = join(dir, 'nothing.sealed');
  const base = ['lora', 'convert', '--base', f, '--adapter', f, '--config', f, '--kbs', 'http://127.0.0.1:9'];
  const bad = cloister([...base, '--to', 'hpke:key.pem', '--print-init-data']);
  expect(bad.code).toBe(64);
  expect(bad.stderr).toMatch(/--to hpke:key.pem: must be kbs:\/\/\/repo\/type\/tag/);
  const missing = cloister(['lora', 'convert', '--base', f, '--kbs', 'http://127.0.0.1:9']);
  expect(missing.code).toBe(64);
  expect(missing.stderr).toMatch(/required option '--adapter <file>' not specified/);
  const gone = cloister([...base, '--to', 'kbs:///a/b/c', '--print-init-data']);
  expect(gone.code).toBe(64);
  expect(gone.stderr).toMatch(/--base .*nothing.sealed: ENOENT/);
});
