/**
 * `cloister demo --keep` leaves replay.sh: the demo's steps as cloister commands. Run as written (with
 * the machine's sh, curl and node), every step passes against the files the demo kept, and the
 * broker and server it started in the background stop with it.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { BIN, cloister } from './run.js';

it('sh replay.sh replays the demo by hand, step by step', { timeout: 300_000 }, () => {
  const demo = cloister(['demo', '--keep']);
  expect(demo.code).toBe(0);
  const dir = /files kept in (\S+): /.exec(demo.stdout.toString())?.[1];
  if (!dir) throw new Error('the demo named no kept directory');
  try {
    const r = spawnSync('sh', [join(dir, 'replay.sh')], {
      encoding: 'utf8',
      env: { ...process.env, CLOISTER: `${process.execPath} ${BIN}` },
      timeout: 180_000,
    });
    expect(r.stderr).toMatch(/key released for model\.sealed \(owner\/models\/kek1\)/);
    expect(r.stderr).toMatch(/refused by the key broker \(403 denied\)/);
    expect(r.stdout).toMatch(/result: WARNING/);
    expect(r.stdout).toMatch(/bundle: replay\/log\.jsonl[\s\S]*result: VERIFIED/);
    expect(r.status).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, 'replay', 'result.json'), 'utf8'))).toMatchObject({ rows: 512 });
    // The background broker and server were told to stop when the script ended (they take a moment).
    const running = () =>
      spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).stdout.includes(
        '--config kbs.json --db sqlite:replay/kbs.db',
      );
    for (const until = Date.now() + 10_000; running() && Date.now() < until; ) spawnSync('sleep', ['0.2']);
    expect(running()).toBe(false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
