#!/usr/bin/env node
/**
 * Confidential fine-tuning (npm run bench:finetune). One process, one run; progress on stderr, the
 * last stdout line is one JSON object.
 *
 * 1. `confidential_vs_plain` (≥ 0.97): the built-in LoRA trainer on the tiny base (d=128, 2 layers, 4
 *    heads, the test vocabulary of src/infer/testing/gguf.ts), seq 64, batch 4, r=8 on q and v,
 *    BENCH_LORA_STEPS steps (default 300), as a confidential job — sealed base (the vendor's key) and
 *    sealed JSONL examples (the company's key) checked and unsealed into /dev/shm, keys from the
 *    broker after attestation (bench/lib/job-broker.js), a sealed checkpoint every
 *    BENCH_CHECKPOINT_EVERY steps (default 50), the adapter sealed to the company, the receipt signed
 *    and appended — against the same trainer on the plaintext files without attestation (read,
 *    evaluate, train, evaluate, write adapter.gguf). Same seed and hyperparameters; throughput is real
 *    (non-padding) tokens over the whole wall time of each. Order plain, confidential, confidential,
 *    plain; the ratio is over the sums. The adapters are compared byte for byte.
 * 2. `lora_tokens_per_s`: the plaintext runs' steady state, after their first BENCH_WARMUP_STEPS
 *    steps (default 10: the first steps trace and compile the jit). The brief's anchor: a tfjs-wasm
 *    prototype reached ~1,550 tokens/s here.
 * 3. `serve_adapter_vs_base` (≥ 0.9): tokens/s of `cloister serve`'s path with a rank-8 adapter ÷
 *    without, same run (bench/lib/serve-adapter.js).
 *
 * BENCH_SKIP=lora or serve leaves a part out (its figures null).
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startJobBroker } from './lib/job-broker.js';
import { confidentialRun, plainRun, plainVsConfidential } from './lib/runs.js';
import { measureServeAdapter } from './lib/serve-adapter.js';

const dist = new URL('../dist/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);
const { createLoraTrainer } = await load('train/lora/trainer.js');
const { tinyLlamaGguf } = await load('infer/testing/gguf.js');
const { sealBytes } = await load('seal/container.js');

const env = (name, fallback) => Number(process.env[name] ?? fallback);
const STEPS = env('BENCH_LORA_STEPS', 300);
const CHECKPOINT_EVERY = env('BENCH_CHECKPOINT_EVERY', 50);
const WARMUP_STEPS = env('BENCH_WARMUP_STEPS', 10);
const SKIP = new Set((process.env.BENCH_SKIP ?? '').split(',').filter(Boolean));
const SEED = 42;
const HP = { steps: STEPS, batch: 4, seq: 64, rank: 8, alpha: 16, targets: ['q', 'v'], heldOut: 0.05 };

const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const round = (x, d = 3) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);
const sha = (b) => createHash('sha256').update(b).digest('hex');
const seconds = (t0) => (performance.now() - t0) / 1000;
const load0 = loadavg();
const started = performance.now();

const work = mkdtempSync(join(tmpdir(), 'cloister-bench-finetune-'));
const shm = mkdtempSync('/dev/shm/cloister-bench-finetune-');

const out = {
  bench: 'finetune',
  lora_tokens_per_s: null,
  confidential_vs_plain: null,
  serve_adapter_vs_base: null,
};

/** Help-desk-like examples, long enough that most rows fill seq 64 (the tiny vocabulary has whole words). */
function examples(n) {
  const words =
    'the of and to in is it that was for on are as with his they at be this from have or by one had not but what all were when we there can an your which their said'.split(
      ' ',
    );
  let s = 7;
  const next = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32;
  };
  const sentence = (k) => Array.from({ length: k }, () => words[Math.floor(next() * words.length)]).join(' ');
  return Array.from({ length: n }, () =>
    JSON.stringify({ prompt: `${sentence(6)}?`, completion: `${sentence(40)}.` }),
  ).join('\n');
}

let brokerHandle;
try {
  if (!SKIP.has('lora')) {
    const j = await startJobBroker({ work, shm, log });
    brokerHandle = j.broker;
    const vendorKek = await j.storeKek('vendor/models/base');
    const companyKek = await j.storeKek('company/data/key');
    const adapterKek = await j.storeKek('company/adapters/key');
    const base = tinyLlamaGguf({ embedding: 128, layers: 2, heads: 4 }).bytes();
    const data = new TextEncoder().encode(`${examples(400)}\n`);
    writeFileSync(join(work, 'base.gguf'), base);
    writeFileSync(join(work, 'data.jsonl'), data);
    const seal = (bytes, uri, kek, name) =>
      sealBytes(bytes, { recipients: [{ type: 'kbs', uri, kek: kek.secret }], name });
    const sealedBase = await seal(base, 'kbs:///vendor/models/base', vendorKek, 'base.gguf');
    const sealedData = await seal(data, 'kbs:///company/data/key', companyKek, 'data.jsonl');
    writeFileSync(join(work, 'base.gguf.sealed'), sealedBase);
    writeFileSync(join(work, 'data.jsonl.sealed'), sealedData);
    log(`lora: base ${base.length} bytes, ${data.length} bytes of examples; broker at ${j.broker.url}`);

    const plain = async (tag) => {
      const r = await plainRun(
        join(work, `plain-${tag}`),
        () =>
          createLoraTrainer({
            inputs: [{ name: 'data', path: join(work, 'data.jsonl') }],
            base: { name: 'base', path: join(work, 'base.gguf') },
            hyperparameters: HP,
            seed: SEED,
          }),
        WARMUP_STEPS,
        'adapter.gguf',
      );
      log(
        `  plain ${tag}: ${r.tokens} tokens in ${r.wall.toFixed(2)} s (${(r.tokens / r.wall).toFixed(0)} tok/s overall, ` +
          `${(r.steadyTokens / r.steadyS).toFixed(0)} after step ${WARMUP_STEPS}); held-out ppl ` +
          `${r.metrics.base_heldout_ppl.toFixed(1)} → ${r.metrics.heldout_ppl.toFixed(1)}`,
      );
      return r;
    };

    let runs = 0;
    const confidential = (tag) =>
      confidentialRun(j.confidentialJob, {
        dir: join(work, `job-${tag}`),
        inputs: ['base.gguf.sealed', 'data.jsonl.sealed'].map((f) => join(work, f)),
        manifest: {
          version: 1,
          name: `bench-lora-${tag}-${++runs}`,
          inputs: [{ name: 'data', path: 'data.jsonl.sealed', sha256: sha(sealedData) }],
          base: { path: 'base.gguf.sealed', sha256: sha(sealedBase) },
          trainer: { builtin: 'lora' },
          hyperparameters: HP,
          seed: SEED,
          outputs: { recipients: ['kbs:///company/adapters/key'] },
          checkpoints: { everySteps: CHECKPOINT_EVERY },
        },
        output: 'adapter.gguf.sealed',
        kek: adapterKek,
        tag,
        log,
      });

    log(
      `lora: ${STEPS} steps each, plain / confidential / confidential / plain; checkpoint every ${CHECKPOINT_EVERY}`,
    );
    const { p1, c1, c2, p2, plainRate, confRate, steadyRate } = await plainVsConfidential(
      plain,
      confidential,
    );
    Object.assign(out, {
      lora_tokens_per_s: round(steadyRate, 0),
      confidential_vs_plain: round(confRate / plainRate),
      lora_plain_s: [round(p1.wall), round(p2.wall)],
      lora_confidential_s: [round(c1.wall), round(c2.wall)],
      lora_confidential_phases_s: [c1.phases, c2.phases],
      lora_steps: STEPS,
      lora_tokens: p1.tokens,
      lora_checkpoints: c1.checkpoints,
      lora_same_adapter: [p2, c1, c2].every((r) => Buffer.compare(r.output, p1.output) === 0),
      lora_heldout_ppl: {
        base: round(p1.metrics.base_heldout_ppl, 2),
        adapter: round(p1.metrics.heldout_ppl, 2),
      },
      lora_shape: 'd128 2 layers 4 heads, seq 64 batch 4, r8 alpha 16 on q v',
      lora_baseline_tfjs_prototype_tokens_per_s: 1550,
    });
    log(
      `lora: ${out.lora_tokens_per_s} tok/s steady; confidential ÷ plain ${out.confidential_vs_plain}; ` +
        `same adapter: ${out.lora_same_adapter}`,
    );
    await j.broker.close();
    brokerHandle = undefined;
  }

  if (!SKIP.has('serve')) {
    log('serve: base vs base + adapter (bench/lib/serve-adapter.js)');
    Object.assign(out, await measureServeAdapter({ log }));
  }
} finally {
  await brokerHandle?.close();
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

Object.assign(out, {
  cpu: cpus()[0]?.model,
  cores: cpus().length,
  loadavg_start: load0.map((x) => round(x, 2)),
  loadavg_end: loadavg().map((x) => round(x, 2)),
  total_s: round(seconds(started), 1),
});
console.log(JSON.stringify(out));
