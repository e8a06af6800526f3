import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { generateKek } from '../../src/seal/keys.js';
import { sealFile } from '../../src/seal/node.js';
import { BIN, cliTimeouts, tempDir } from './run.js';

vi.setConfig(cliTimeouts(120_000));

/** What each verb must not pay for at start: the engines, the stores and the broker's server. */
const HEAVY = [
  'node-llama-cpp',
  'onnxruntime-node',
  '@huggingface/transformers',
  'pg',
  'better-sqlite3',
  'fastify',
];
const HOOK = new URL('./record-loads.mjs', import.meta.url).pathname;
const dir = tempDir();
afterAll(() => {
  spawnSync('rm', ['-rf', dir]);
});

/** The packages under node_modules that `node --import HOOK …args` resolved. */
function packagesLoaded(name: string, args: string[]): string[] {
  const log = join(dir, `${name}.log`);
  writeFileSync(log, '');
  const r = spawnSync(process.execPath, ['--import', HOOK, ...args], {
    env: { ...process.env, CLOISTER_LOAD_LOG: log },
    encoding: 'utf8',
  });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const names = readFileSync(log, 'utf8')
    .split('\n')
    .map((url) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1])
    .filter((n): n is string => n !== undefined);
  return [...new Set(names)];
}

it('the hook sees a heavy package when one is loaded', () => {
  expect(packagesLoaded('control', ['--input-type=module', '-e', "await import('fastify')"])).toContain(
    'fastify',
  );
});

it('--help and inspect load none of the heavy packages', async () => {
  const plain = join(dir, 'small.bin');
  writeFileSync(plain, 'a small file\n');
  await sealFile(plain, join(dir, 'small.sealed'), {
    recipients: [{ type: 'kbs', uri: 'kbs:///owner/models/kek1', kek: generateKek().secret }],
  });
  for (const [name, args] of [
    ['help', ['--help']],
    ['inspect', ['inspect', join(dir, 'small.sealed')]],
    ['kbs-help', ['kbs', 'admin-token', '--help']],
    ['serve-help', ['serve', '--help']],
  ] as const) {
    const loaded = packagesLoaded(name, [BIN, ...args]);
    expect(loaded, name).toContain('commander');
    expect(
      loaded.filter((p) => HEAVY.includes(p)),
      name,
    ).toEqual([]);
  }
});
