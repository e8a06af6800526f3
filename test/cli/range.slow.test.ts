/**
 * `unseal --range` over more than 2 GiB: read and written a batch of chunks at a time, in bounded
 * memory (reading the whole span at once aborted Node above 2 GiB and needed twice the span in RAM).
 * The plaintext is a sparse file, so only the sealed file takes real disk space.
 */
import { spawnSync } from 'node:child_process';
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { BIN, tempDir } from './run.js';

const SIZE = 2.25 * 1024 ** 3;
const LIMIT_KB = 512 * 1024;
const dir = tempDir();
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('unseals a range of more than 2 GiB to a pipe under 512 MiB RSS', () => {
  const node = process.execPath;
  const k = join(dir, 'k.jwk');
  expect(spawnSync(node, [BIN, 'keygen', '--kek', k]).status).toBe(0);
  writeFileSync(join(dir, 'zeros'), '');
  truncateSync(join(dir, 'zeros'), SIZE);
  const sealed = spawnSync(
    node,
    [BIN, 'seal', '--quiet', '--to', `kbs:///t/m/k=${k}`, join(dir, 'zeros'), join(dir, 's')],
    {
      encoding: 'utf8',
    },
  );
  expect(sealed.stderr).toBe('');
  expect(sealed.status).toBe(0);
  rmSync(join(dir, 'zeros'));
  const [a, b] = [7, SIZE - 5];
  // cmp against exactly b - a zero bytes: any byte wrong, missing or extra fails it.
  const script = `set -euo pipefail
    /usr/bin/time -f '%M' -o ${dir}/rss ${node} ${BIN} unseal --key ${k} --range ${a}-${b} ${dir}/s - \\
    | cmp - <(head -c ${b - a} /dev/zero)
    cat ${dir}/rss`;
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const rssKb = Number(r.stdout.trim());
  expect(rssKb).toBeGreaterThan(0);
  expect(rssKb).toBeLessThan(LIMIT_KB);
  console.log(JSON.stringify({ range_bytes: b - a, unseal_range_rss_kb: rssKb }));
});
