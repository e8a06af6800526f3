#!/usr/bin/env node
/**
 * Confidential training overhead (npm run bench:train). One process, one run, four measurements; the
 * last stdout line is one JSON object, progress goes to stderr.
 *
 * A key broker runs in this process (dev mode, SQLite in a temporary folder, the sample TEE accepted)
 * with the KEKs of the inputs and of the model's owner stored through its admin API. Every
 * confidential job goes the way `cloister train JOB --tee sample` goes (src/cli/train.ts): prepareJob,
 * a sample TEE whose host_data is the digest of the job's init-data, a KbsClient sending that
 * init-data, then runTrainingJob: sealed inputs checked and unsealed into a private folder in
 * /dev/shm, sealed checkpoints chained through the broker's compare-and-set, outputs sealed, the
 * receipt signed and appended to the broker's transparency log.
 *
 * 1. `builtin_confidential_vs_plain` (≥ 0.97): the built-in llama trainer (d=128, 2 layers, 4 heads,
 *    seq 64, batch 4, BENCH_LLAMA_STEPS steps, default 400) as that confidential job on a sealed
 *    corpus, with a sealed checkpoint every BENCH_CHECKPOINT_EVERY steps (default 50: a checkpoint
 *    every few seconds, where the manifest's default is one every 10 minutes), against the same
 *    trainer on the plaintext corpus without attestation: read the file, evaluate, train the same
 *    steps, evaluate, write model.gguf (what the job does, less sealing, checkpoints and keys). Same
 *    seed, same hyperparameters; throughput is tokens over the whole wall time of each (the
 *    confidential one from prepareJob to the receipt in the log). Order plain, confidential,
 *    confidential, plain, so that drift on a shared machine hits both; the ratio is over the sums.
 *    The two models are compared byte for byte (the sealed one unsealed).
 * 2. `llama_tokens_per_s`: the plaintext runs' steady state, tokens per second after their first
 *    BENCH_WARMUP_STEPS steps (default 20: the first steps trace and compile the jit).
 * 3. `byo_overhead` (≤ 1.05): python/examples/train_csv.py (PyTorch, one thread) on a generated CSV,
 *    as a confidential job with the command trainer (sealed CSV, sealed checkpoints through the
 *    training API), ÷ the same script with the same hyperparameters on the plaintext CSV against
 *    serveTrainingApi with a session that keeps checkpoints in memory (no sealing, no broker): the
 *    only difference is confidentiality. BENCH_BYO_STEPS (default 4000, a checkpoint every
 *    BENCH_BYO_CHECKPOINT_EVERY = 250) sizes it for ≥ 60 s plain here (about 16-22 ms a step).
 * 4. `checkpoint_seal_gbps`: CheckpointStore.save (encode, seal, sha256, write through ConfinedDir,
 *    the broker's compare-and-set) of a BENCH_CHECKPOINT_MIB (default 256) MiB state into /dev/shm,
 *    best of 3, ÷ `seal_gbps` measured as bench/seal.js measures it (sealFile of a file of the same
 *    size in /dev/shm, best of 3): `checkpoint_seal_vs_seal` (≥ 0.7).
 *
 * BENCH_SKIP=byo (or llama, checkpoint; comma separated) leaves a part out (its figures null).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startJobBroker } from './lib/job-broker.js';
import { confidentialRun, plainRun, plainVsConfidential } from './lib/runs.js';

const dist = new URL('../dist/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);
const root = new URL('..', import.meta.url).pathname;

const { ConfinedDir } = await load('tee/index.js');
const { createLlamaTrainer, serveTrainingApi } = await load('train/index.js');
const { trainInitData } = await load('wire/index.js');
const { CheckpointStore } = await load('train/checkpoint.js');
const { sealFile } = await load('seal/node.js');
const { sealBytes, openBytes } = await load('seal/container.js');
const { chunkCipherBackend } = await load('seal/aead-native.js');

const env = (name, fallback) => Number(process.env[name] ?? fallback);
const LLAMA_STEPS = env('BENCH_LLAMA_STEPS', 400);
const CHECKPOINT_EVERY = env('BENCH_CHECKPOINT_EVERY', 50);
const WARMUP_STEPS = env('BENCH_WARMUP_STEPS', 20);
const BYO_STEPS = env('BENCH_BYO_STEPS', 4000);
const BYO_EVERY = env('BENCH_BYO_CHECKPOINT_EVERY', 250);
const CHECKPOINT_BYTES = env('BENCH_CHECKPOINT_MIB', 256) * 1024 * 1024;
const SKIP = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean));
const PYTHON = '/usr/bin/python3';
const SEED = 42;
const LLAMA_HP = { steps: LLAMA_STEPS, dim: 128, layers: 2, heads: 4, seq: 64, batch: 4, heldOut: 0.05 };

const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const round = (x, d = 3) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);
const sha = (b) => createHash('sha256').update(b).digest('hex');
const seconds = (t0) => (performance.now() - t0) / 1000;
const load0 = loadavg();
const started = performance.now();

const work = mkdtempSync(join(tmpdir(), 'cloister-bench-train-'));
const shm = mkdtempSync('/dev/shm/cloister-bench-train-');

/** A small deterministic PRNG (mulberry32): the same corpus and table on every run. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** About `bytes` of English-looking text with some structure for the LM to learn. */
function corpus(bytes) {
  const words =
    'the a of and to in is was that for on with as by at from his her they which this be had not are but were have one all when there their an been who would will more if no out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three'.split(
      ' ',
    );
  const r = prng(7);
  let out = '';
  while (out.length < bytes) {
    const n = 4 + Math.floor(r() * 10);
    const s = [];
    for (let i = 0; i < n; i++) s.push(words[Math.floor(r() ** 2 * words.length)]);
    s[0] = s[0][0].toUpperCase() + s[0].slice(1);
    out += `${s.join(' ')}${r() < 0.2 ? '?' : '.'}${r() < 0.15 ? '\n' : ' '}`;
  }
  return out;
}

/** A classification table: FEATURES numeric columns, a class from a noisy linear rule. */
function table(rows, features, classes) {
  const r = prng(11);
  const gauss = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const w = Array.from({ length: classes }, () => Array.from({ length: features }, gauss));
  const lines = [[...Array.from({ length: features }, (_, i) => `f${i}`), 'label'].join(',')];
  for (let n = 0; n < rows; n++) {
    const x = Array.from({ length: features }, gauss);
    let best = 0;
    let bestScore = -Infinity;
    for (let c = 0; c < classes; c++) {
      const s = w[c].reduce((acc, wi, i) => acc + wi * x[i], 0) + gauss();
      if (s > bestScore) [best, bestScore] = [c, s];
    }
    lines.push([...x.map((v) => v.toFixed(4)), `c${best}`].join(','));
  }
  return `${lines.join('\n')}\n`;
}

// ---- the broker ---------------------------------------------------------------------------------------

const { broker, storeKek, teeFor, confidentialJob } = await startJobBroker({ work, shm, log });
const dataKek = await storeKek('bench/data/key');
const modelKek = await storeKek('bench/model/key');
const MODEL_URI = 'kbs:///bench/model/key';
log(`broker at ${broker.url} (dev mode, SQLite in ${work}); KEKs stored`);

const sealTo = (bytes, name) =>
  sealBytes(bytes, {
    recipients: [{ type: 'kbs', uri: 'kbs:///bench/data/key', kek: dataKek.secret }],
    name,
  });

const out = {
  bench: 'train',
  llama_tokens_per_s: null,
  builtin_confidential_vs_plain: null,
  byo_overhead: null,
  checkpoint_seal_gbps: null,
  checkpoint_seal_vs_seal: null,
};

try {
  // ---- 1 + 2: the built-in llama trainer ------------------------------------------------------------
  if (!SKIP.has('llama')) {
    const text = corpus(128 * 1024);
    const plainCorpus = join(work, 'corpus.txt');
    writeFileSync(plainCorpus, text);
    const sealedCorpus = await sealTo(new TextEncoder().encode(text), 'corpus.txt');
    writeFileSync(join(work, 'corpus.txt.sealed'), sealedCorpus);

    // What `python train.py` is to the BYO case: the trainer alone, on the plaintext file.
    const plain = async (tag) => {
      const r = await plainRun(
        join(work, `plain-${tag}`),
        () =>
          createLlamaTrainer({
            inputs: [{ name: 'corpus', path: plainCorpus }],
            hyperparameters: LLAMA_HP,
            seed: SEED,
          }),
        WARMUP_STEPS,
        'model.gguf',
      );
      log(
        `  plain ${tag}: ${r.tokens} tokens in ${r.wall.toFixed(2)} s (${(r.tokens / r.wall).toFixed(0)} tok/s overall, ` +
          `${(r.steadyTokens / r.steadyS).toFixed(0)} tok/s after step ${WARMUP_STEPS})`,
      );
      return r;
    };

    let runs = 0;
    // Each run its own job (another name, another id): the broker's counter starts at none.
    const confidential = (tag) =>
      confidentialRun(confidentialJob, {
        dir: join(work, `job-${tag}`),
        inputs: [join(work, 'corpus.txt.sealed')],
        manifest: {
          version: 1,
          name: `bench-llama-${tag}-${++runs}`,
          inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: sha(sealedCorpus) }],
          trainer: { builtin: 'llama' },
          hyperparameters: LLAMA_HP,
          seed: SEED,
          outputs: { recipients: [MODEL_URI] },
          checkpoints: { everySteps: CHECKPOINT_EVERY },
        },
        output: 'model.gguf.sealed',
        kek: modelKek,
        tag,
        log,
      });

    log(`llama: warm-up (engine init, ${WARMUP_STEPS} steps; not timed)`);
    {
      const t = await createLlamaTrainer({
        inputs: [{ name: 'corpus', path: plainCorpus }],
        hyperparameters: { ...LLAMA_HP, steps: WARMUP_STEPS },
        seed: SEED,
      });
      while (t.completedSteps < t.totalSteps) await t.step();
      t.dispose();
    }
    log(
      `llama: ${LLAMA_STEPS} steps each, plain / confidential / confidential / plain; checkpoint every ${CHECKPOINT_EVERY} steps`,
    );
    const { p1, c1, c2, p2, plainRate, confRate, steadyRate } = await plainVsConfidential(
      plain,
      confidential,
    );
    Object.assign(out, {
      llama_tokens_per_s: round(steadyRate, 0),
      builtin_confidential_vs_plain: round(confRate / plainRate),
      builtin_plain_s: [round(p1.wall), round(p2.wall)],
      builtin_confidential_s: [round(c1.wall), round(c2.wall)],
      builtin_confidential_phases_s: [c1.phases, c2.phases],
      builtin_plain_tokens_per_s: round(plainRate, 0),
      builtin_confidential_tokens_per_s: round(confRate, 0),
      builtin_steps: LLAMA_STEPS,
      builtin_tokens: p1.tokens,
      builtin_checkpoints: c1.checkpoints,
      builtin_checkpoint_every_steps: CHECKPOINT_EVERY,
      builtin_same_model: [p2, c1, c2].every((r) => Buffer.compare(r.output, p1.output) === 0),
      llama_shape: 'd128 2 layers 4 heads seq 64 batch 4',
    });
    log(
      `llama: ${out.llama_tokens_per_s} tok/s steady; confidential ÷ plain ${out.builtin_confidential_vs_plain}; ` +
        `same model: ${out.builtin_same_model}`,
    );
  }

  // ---- 3: a bring-your-own PyTorch trainer ----------------------------------------------------------
  if (!SKIP.has('byo')) {
    const torch = spawnSync(PYTHON, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
    if (torch.status !== 0) {
      out.byo_overhead_reason = `${PYTHON} cannot import torch: ${torch.stderr.trim().split('\n').at(-1)}`;
      log(`byo: skipped (${out.byo_overhead_reason})`);
    } else {
      const csv = table(20_000, 32, 4);
      const hp = {
        steps: BYO_STEPS,
        batch: 256,
        hidden: [256, 256],
        lr: 0.003,
        checkpointEvery: BYO_EVERY,
      };
      const byo = join(work, 'byo');
      mkdirSync(byo);
      for (const [from, to] of [
        ['python/examples/train_csv.py', 'train_csv.py'],
        ['python/cloister_train.py', 'cloister_train.py'],
      ])
        copyFileSync(join(root, from), join(byo, to));
      writeFileSync(join(byo, 'table.csv'), csv);
      const sealedCsv = await sealTo(new TextEncoder().encode(csv), 'table.csv');
      writeFileSync(join(byo, 'table.csv.sealed'), sealedCsv);
      log(
        `byo: torch ${torch.stdout.trim()}; train_csv.py, ${BYO_STEPS} steps, checkpoint every ${BYO_EVERY}, ` +
          `${csv.length} byte CSV; plain first, then confidential`,
      );

      // The baseline: the script against the training API with checkpoints kept in memory.
      const plainOut = join(byo, 'plain-out');
      mkdirSync(plainOut);
      const socketPath = join(shm, 'plain-train.sock');
      let latest = null;
      let saves = 0;
      const session = {
        info: {
          job: sha('bench-byo-plain'),
          name: 'bench-byo-plain',
          hyperparameters: hp,
          seed: SEED,
          inputs: { table: join(byo, 'table.csv') },
          outputDir: plainOut,
        },
        async latest() {
          return latest;
        },
        async save(state, step) {
          latest = { number: ++saves, step, state };
          return { number: saves, sha256: '0'.repeat(64) };
        },
        metrics() {},
        finish() {},
      };
      const t0 = performance.now();
      const api = await serveTrainingApi({ socketPath, session });
      const code = await new Promise((resolve, reject) => {
        const c = spawn(PYTHON, ['train_csv.py'], {
          cwd: byo,
          env: { ...process.env, CLOISTER_TRAIN_SOCKET: socketPath },
          stdio: ['ignore', 'inherit', 'inherit'],
        });
        c.once('error', reject);
        c.once('exit', (status) => resolve(status));
      });
      await api.close();
      const plainS = seconds(t0);
      if (code !== 0) throw new Error(`train_csv.py (plain) exited with ${code}`);
      log(`  plain: ${plainS.toFixed(2)} s, ${saves} checkpoints kept in memory`);

      const { result, wall, phases } = await confidentialJob(byo, {
        version: 1,
        name: 'bench-byo',
        inputs: [{ name: 'table', path: 'table.csv.sealed', sha256: sha(sealedCsv) }],
        trainer: { command: [PYTHON, 'train_csv.py'], files: ['train_csv.py', 'cloister_train.py'] },
        hyperparameters: hp,
        seed: SEED,
        outputs: { recipients: [MODEL_URI] },
      });
      log(
        `  confidential: ${wall.toFixed(2)} s (setup ${phases.setup} s, trainer ${phases.train} s, sealing and receipt ${phases.finish} s), ` +
          `${result.checkpoints.length} sealed checkpoints, receipt at log entry ${result.logIndex}`,
      );
      const sealedModel = await openBytes(readFileSync(join(byo, 'out', 'model.pt.sealed')), {
        kind: 'kek',
        secret: modelKek.secret,
      });
      Object.assign(out, {
        byo_overhead: round(wall / plainS),
        byo_plain_s: round(plainS),
        byo_confidential_s: round(wall),
        byo_confidential_phases_s: phases,
        byo_steps: BYO_STEPS,
        byo_checkpoints: result.checkpoints.length,
        byo_plain_checkpoints: saves,
        byo_same_model: Buffer.compare(sealedModel, readFileSync(join(plainOut, 'model.pt'))) === 0,
      });
      if (plainS < 60) log(`byo: WARNING the plain run took ${plainS.toFixed(1)} s, under 60 s`);
      log(`byo: overhead ${out.byo_overhead}; same model.pt: ${out.byo_same_model}`);
    }
  }

  // ---- 4: sealing a checkpoint ----------------------------------------------------------------------
  if (!SKIP.has('checkpoint')) {
    const state = new Uint8Array(CHECKPOINT_BYTES);
    randomFillSync(state);
    const plainFile = join(shm, 'state.bin');
    writeFileSync(plainFile, state);
    const recipients = [{ type: 'kbs', uri: MODEL_URI, kek: modelKek.secret }];
    const times = {};
    const best = async (n, fn, what) => {
      times[what] = [];
      for (let i = 0; i < n; i++) {
        const t = performance.now();
        await fn();
        times[what].push(round(seconds(t)));
      }
      return Math.min(...times[what]);
    };
    // bench/seal.js's seal_gbps: sealFile file → file in /dev/shm, best of 3.
    const sealS = await best(
      3,
      () => sealFile(plainFile, join(shm, 'state.sealed'), { recipients, force: true }),
      'seal',
    );
    rmSync(join(shm, 'state.sealed'));
    rmSync(plainFile);

    const job = sha(`bench-checkpoint-${Date.now()}`);
    const initData = {
      format: 'json',
      body: trainInitData(
        job,
        `sha256:${'0'.repeat(64)}`,
        recipients.map((r) => r.uri),
      ),
    };
    const { client } = await teeFor(initData);
    const dir = await ConfinedDir.open(join(shm, 'checkpoints'), true);
    const store = new CheckpointStore({
      dir,
      job,
      trainer: 'bench',
      recipients,
      macKey: await client.trainKey(job),
      counter: client,
    });
    // As a job starts: the broker is asked for the newest checkpoint (and the session attested) first.
    if ((await store.resume()) !== null) throw new Error('a fresh job has a checkpoint');
    let step = 0;
    const saveS = await best(3, () => store.save(state, ++step), 'save');
    await dir.close();
    const ckptGbps = CHECKPOINT_BYTES / saveS / 1e9;
    const sealGbps = CHECKPOINT_BYTES / sealS / 1e9;
    Object.assign(out, {
      checkpoint_seal_gbps: round(ckptGbps),
      checkpoint_seal_vs_seal: round(ckptGbps / sealGbps),
      seal_gbps: round(sealGbps),
      checkpoint_bytes: CHECKPOINT_BYTES,
      checkpoint_saves: store.chain.length,
      checkpoint_save_s: times.save,
      seal_file_s: times.seal,
    });
    log(
      `checkpoint: CheckpointStore.save ${ckptGbps.toFixed(2)} GB/s, sealFile ${sealGbps.toFixed(2)} GB/s ` +
        `(${chunkCipherBackend()}, ${availableParallelism()} workers): ratio ${out.checkpoint_seal_vs_seal}`,
    );
  }
} finally {
  await broker.close();
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

Object.assign(out, {
  cipher: chunkCipherBackend(),
  workers: availableParallelism(),
  cpu: cpus()[0]?.model,
  cores: cpus().length,
  loadavg_start: load0.map((x) => round(x, 2)),
  loadavg_end: loadavg().map((x) => round(x, 2)),
  total_s: round(seconds(started), 1),
});
console.log(JSON.stringify(out));
