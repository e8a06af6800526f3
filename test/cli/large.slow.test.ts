/**
 * Bounded memory on large inputs: a multi-GiB stream sealed and unsealed through pipes, with the peak
 * RSS of each process measured by GNU time. SLOW_TEST_GIB sets the size (default 4).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { BIN, tempDir } from './run.js';

const GIB = Number(process.env.SLOW_TEST_GIB ?? 4);
const LIMIT_KB = 512 * 1024;

it(`seals and unseals ${GIB} GiB through pipes under 512 MiB RSS per process`, () => {
  const dir = tempDir();
  const node = process.execPath;
  const k = join(dir, 'k.jwk');
  expect(spawnSync(node, [BIN, 'keygen', '--kek', k]).status).toBe(0);
  const script = `set -euo pipefail
    head -c ${GIB}G /dev/zero \\
    | /usr/bin/time -f 'seal_rss_kb=%M' -o ${dir}/seal.time ${node} ${BIN} seal --quiet --to kbs:///t/m/k=${k} - - \\
    | /usr/bin/time -f 'unseal_rss_kb=%M' -o ${dir}/unseal.time ${node} ${BIN} unseal --quiet --key ${k} - - \\
    | wc -c
    cat ${dir}/seal.time ${dir}/unseal.time`;
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const [count, ...rss] = r.stdout.trim().split('\n');
  expect(Number(count)).toBe(GIB * 1024 ** 3);
  const kb = Object.fromEntries(rss.map((l) => l.split('=')).map(([n, v]) => [n, Number(v)]));
  expect(kb.seal_rss_kb).toBeGreaterThan(0);
  expect(kb.seal_rss_kb).toBeLessThan(LIMIT_KB);
  expect(kb.unseal_rss_kb).toBeLessThan(LIMIT_KB);
  console.log(JSON.stringify(kb));
});
