/**
 * The runs the training benches (bench/train.js, bench/finetune.js) compare, the same for each
 * built-in trainer: a plain run (the trainer alone on plaintext files, as a user's own script would
 * run it) and a confidential run (the job through the broker, as `cloister train --tee sample`), in
 * the order plain, confidential, confidential, plain so that a drift in the machine's load falls on
 * both alike.
 */
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';

const dist = new URL('../../dist/', import.meta.url);
const { openBytes } = await import(new URL('seal/container.js', dist).href);

const seconds = (t0) => (performance.now() - t0) / 1000;

/**
 * Trains with the trainer `create()` makes, in a new folder `dir`: evaluates, steps to the end,
 * evaluates again and exports there. Tokens are counted overall and after `warmupSteps` steps (the
 * steady rate, without the engine's first-step costs); `output` is the exported file read back.
 */
export async function plainRun(dir, create, warmupSteps, output) {
  mkdirSync(dir);
  const t0 = performance.now();
  const trainer = await create();
  await trainer.evaluate();
  let tokens = 0;
  let steadyTokens = 0;
  let steadyFrom;
  while (trainer.completedSteps < trainer.totalSteps) {
    const r = await trainer.step();
    tokens += r.tokens;
    if (r.step === warmupSteps) steadyFrom = performance.now();
    else if (r.step > warmupSteps) steadyTokens += r.tokens;
  }
  const steadyS = seconds(steadyFrom);
  const metrics = await trainer.evaluate();
  for (const f of await trainer.exportModel()) await writeFile(join(dir, f.name), f.bytes);
  trainer.dispose();
  const wall = seconds(t0);
  return { wall, tokens, steadyTokens, steadyS, metrics, output: readFileSync(join(dir, output)) };
}

/**
 * Runs `manifest` with `confidentialJob` (bench/lib/job-broker.js) in a new folder `dir`, the sealed `inputs`
 * (paths) copied in; opens the sealed output `out/<output>` with `kek` and logs one line for `tag`.
 */
export async function confidentialRun(confidentialJob, { dir, inputs, manifest, output, kek, tag, log }) {
  mkdirSync(dir);
  for (const f of inputs) copyFileSync(f, join(dir, basename(f)));
  let tokens = 0;
  const { result, wall, phases } = await confidentialJob(dir, manifest, (e) => {
    tokens += e.tokens ?? 0;
  });
  const opened = await openBytes(readFileSync(join(dir, 'out', output)), { kind: 'kek', secret: kek.secret });
  log(
    `  confidential ${tag}: ${tokens} tokens in ${wall.toFixed(2)} s (${(tokens / wall).toFixed(0)} tok/s), ` +
      `${result.checkpoints.length} sealed checkpoints, receipt at log entry ${result.logIndex}`,
  );
  return { wall, tokens, checkpoints: result.checkpoints.length, output: opened, phases };
}

/**
 * plain('a'), confidential('a'), confidential('b'), plain('b'); with the overall token rate of each
 * kind and the plain runs' steady rate.
 */
export async function plainVsConfidential(plain, confidential) {
  const p1 = await plain('a');
  const c1 = await confidential('a');
  const c2 = await confidential('b');
  const p2 = await plain('b');
  return {
    p1,
    c1,
    c2,
    p2,
    plainRate: (p1.tokens + p2.tokens) / (p1.wall + p2.wall),
    confRate: (c1.tokens + c2.tokens) / (c1.wall + c2.wall),
    steadyRate: (p1.steadyTokens + p2.steadyTokens) / (p1.steadyS + p2.steadyS),
  };
}
