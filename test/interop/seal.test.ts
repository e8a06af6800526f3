import { spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';

it('an independent Python implementation of docs/format.md reproduces and refuses every vector', () => {
  const script = new URL('./seal_v1.py', import.meta.url).pathname;
  const vectors = new URL('../../docs/vectors/seal.json', import.meta.url).pathname;
  const r = spawnSync('python3', [script, vectors], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.stdout).not.toMatch(/FAIL/);
  expect(r.stdout.match(/^PASS/gm)?.length).toBe(16);
  expect(r.status).toBe(0);
});
