/**
 * serve_adapter_vs_base for `npm run bench:finetune` (bench/finetune.js calls it): tokens/s of
 * `cloister serve` with a LoRA adapter ÷ without, same run, on the real path — a sealed tiny llama
 * base (a few MB) and a sealed GGUF adapter of rank 8 on attn_q and attn_v of every block, each
 * server started by startInference (unsealing, checks, llama.cpp), requests through Oblivious HTTP
 * with the verifying client. Both servers run at once; the runs alternate base, adapter, adapter,
 * base (ABBA) so that drift of the machine hits both alike. Each run is one greedy chat completion of
 * `steps` tokens at most; tokens/s is completion tokens over wall time, summed per variant.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const dist = new URL('../../dist/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);

/** Deterministic values in [-amp, amp). */
function values(n, seed, amp) {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * 2 - 1) * amp;
  }
  return out;
}

/**
 * @param {{ steps?: number, rounds?: number, threads?: number, gpu?: 'auto' | false,
 *           log?: (line: string) => void }} [o]
 *   steps: tokens per request (default 64); rounds: ABBA rounds (default 4, i.e. 8 runs per variant);
 *   threads: llama.cpp threads (default 1: steadier on a small shared machine); gpu: default false.
 * @returns {Promise<{ serve_tokens_per_s_base: number, serve_tokens_per_s_adapter: number,
 *   serve_adapter_vs_base: number }>}
 */
export async function measureServeAdapter(o = {}) {
  const steps = o.steps ?? 64;
  const rounds = o.rounds ?? 4;
  const log = o.log ?? (() => {});
  const { tinyLlamaGguf } = await load('infer/testing/gguf.js');
  const { readGgufInfo, writeLoraAdapter } = await load('wire/index.js');
  const { generateKek } = await load('seal/keys.js');
  const { sealFile } = await load('seal/node.js');
  const { startInference } = await load('infer/app.js');
  const { confidentialFetch, parseClientPolicy } = await load('client/index.js');
  const { offlineSource } = await load('attest/collateral/index.js');
  const { InsecureSampleAttester } = await load('tee/evidence/sample.js');

  const dir = mkdtempSync(join(tmpdir(), 'cloister-bench-serve-adapter-'));
  const servers = [];
  try {
    const model = tinyLlamaGguf({ seed: 7, embedding: 256, layers: 4, context: 512 });
    const baseBytes = model.bytes();
    const info = readGgufInfo(baseBytes);
    const rank = 8;
    let seed = 1;
    const pairs = [];
    for (let l = 0; l < model.shape.layers; l++) {
      for (const t of ['attn_q', 'attn_v']) {
        const target = `blk.${l}.${t}.weight`;
        const [inputs, outputs] = info.tensors.find((x) => x.name === target).dims;
        pairs.push({
          target,
          inputs,
          outputs,
          rank,
          a: values(rank * inputs, seed++, 0.1),
          b: values(outputs * rank, seed++, 0.1),
        });
      }
    }
    const kek = generateKek('kbs:///bench/models/kek');
    const seal = async (name, bytes) => {
      writeFileSync(join(dir, name), bytes);
      await sealFile(join(dir, name), join(dir, `${name}.sealed`), {
        recipients: [{ type: 'kbs', uri: kek.uri, kek: kek.secret }],
      });
      return join(dir, `${name}.sealed`);
    };
    const base = await seal('base.gguf', baseBytes);
    const adapterBytes = writeLoraAdapter({
      architecture: info.architecture,
      alpha: rank,
      name: 'bench',
      pairs,
    });
    const adapter = await seal('adapter.gguf', adapterBytes);
    const adapterDigest = `sha256:${createHash('sha256').update(readFileSync(adapter)).digest('hex')}`;
    log(
      `serve-adapter: base ${(baseBytes.length / 2 ** 20).toFixed(1)} MiB (d=256, 4 layers), adapter r=${rank} on q,v (${(adapterBytes.length / 2 ** 10).toFixed(0)} KiB)`,
    );
    const serve = (adapters) =>
      startInference({
        models: [base],
        ...(adapters.length ? { adapters } : {}),
        tee: { cpu: new InsecureSampleAttester() },
        keys: { local: kek },
        privateDir: { parent: dir, allowDisk: true },
        engines: { gpu: o.gpu ?? false, parallel: 1, threads: o.threads ?? 1 },
        maxQueued: 4,
        allowPlaintext: false,
        host: '127.0.0.1',
        port: 0,
        log: () => {},
      });
    servers.push(await serve([]));
    servers.push(await serve([{ file: adapter, scale: 1 }]));
    const clients = servers.map((s, i) =>
      confidentialFetch({
        url: s.url,
        policy: parseClientPolicy({
          tees: ['sample'],
          minStatus: 'warning',
          adapters: i === 0 ? [] : [adapterDigest],
        }),
        collateral: offlineSource,
        refusals: 'throw',
      }),
    );
    const run = async (i, r) => {
      const t = performance.now();
      const res = await clients[i](`${servers[i].url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'base',
          messages: [{ role: 'user', content: `hello world, round ${r}` }],
          max_tokens: steps,
          temperature: 0,
        }),
      });
      if (res.status !== 200)
        throw new Error(`serve-adapter: the server answered ${res.status}: ${await res.text()}`);
      const body = await res.json();
      return { tokens: body.usage.completion_tokens, ms: performance.now() - t };
    };
    // One warm-up each: the first request pays for verification and llama.cpp's first graph.
    await run(0, -1);
    await run(1, -1);
    const total = [
      { tokens: 0, ms: 0 },
      { tokens: 0, ms: 0 },
    ];
    for (let r = 0; r < rounds; r++) {
      for (const i of [0, 1, 1, 0]) {
        const x = await run(i, r);
        total[i].tokens += x.tokens;
        total[i].ms += x.ms;
      }
    }
    const [plain, tuned] = total.map((x) => x.tokens / (x.ms / 1000));
    const out = {
      serve_tokens_per_s_base: Math.round(plain * 10) / 10,
      serve_tokens_per_s_adapter: Math.round(tuned * 10) / 10,
      serve_adapter_vs_base: Math.round((tuned / plain) * 1000) / 1000,
    };
    log(
      `serve-adapter: ${out.serve_tokens_per_s_base} tokens/s base, ${out.serve_tokens_per_s_adapter} with the adapter (${total[0].tokens}/${total[1].tokens} tokens) → ${out.serve_adapter_vs_base}`,
    );
    return out;
  } finally {
    for (const s of servers) await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
