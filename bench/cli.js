#!/usr/bin/env node
/**
 * Start-up time of the `cloister` binary (npm run bench:cli): the minimum of BENCH_RUNS (default
 * 10) runs each of `cloister --help`, `cloister inspect FILE` (a small sealed file this script makes
 * first) and, as the same-run floor, `node -e 0` (what starting Node itself costs). Each figure is wall
 * time of the whole process, spawn to exit. `*_vs_node` is that figure over the floor (target ≤ 3).
 * BENCH_BIN points at another binary (e.g. an older build's bin/cloister.js). The last line is one
 * JSON object.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';

const bin = resolve(process.env.BENCH_BIN ?? new URL('../bin/cloister.js', import.meta.url).pathname);
const runs = Number(process.env.BENCH_RUNS ?? 10);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const ms = (x) => Math.round(x * 10) / 10;
const dir = mkdtempSync(join(tmpdir(), 'cloister-bench-'));

/** Runs `node ...args` to completion, failing loudly on a non-zero exit; returns its wall time in ms. */
function once(args) {
  const t = performance.now();
  const r = spawnSync(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const elapsed = performance.now() - t;
  if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return elapsed;
}

function best(args) {
  once(args); // warm the file-system cache; not counted
  let b = Number.POSITIVE_INFINITY;
  for (let i = 0; i < runs; i++) b = Math.min(b, once(args));
  return b;
}

try {
  const kek = join(dir, 'owner.kek');
  const plain = join(dir, 'small.bin');
  const sealed = join(dir, 'small.bin.sealed');
  writeFileSync(plain, 'a small file to seal\n');
  once([bin, 'keygen', '--kek', kek, '--uri', 'kbs:///bench/models/kek']);
  once([bin, 'seal', plain, sealed, '--to', `kbs:///bench/models/kek=${kek}`]);
  log(`binary ${bin}, min of ${runs} runs each`);
  const node = best(['-e', '0']);
  log(`node -e 0: ${ms(node)} ms`);
  const help = best([bin, '--help']);
  log(`cloister --help: ${ms(help)} ms`);
  const inspect = best([bin, 'inspect', sealed]);
  log(`cloister inspect: ${ms(inspect)} ms`);
  const ratio = (x) => Math.round((x / node) * 100) / 100;
  console.log(
    JSON.stringify({
      bench: 'cli',
      runs,
      node_ms: ms(node),
      help_ms: ms(help),
      inspect_ms: ms(inspect),
      help_vs_node: ratio(help),
      inspect_vs_node: ratio(inspect),
    }),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
