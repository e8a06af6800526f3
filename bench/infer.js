#!/usr/bin/env node
/**
 * Confidential inference overhead (npm run bench:infer). One server process serves one generated
 * llama model both ways at once: plaintext /v1 requests (the baseline) and the same requests through
 * Oblivious HTTP with confidentialFetch (what clients use), alternating rounds so drift hits both.
 * Measured: streamed tokens/s at 1 client (8 single requests per round, interleaved ABBA) and 8
 * concurrent clients (both ways back to back), the ratio within each round, median over BENCH_ROUNDS
 * rounds whose order alternates; and the added
 * latency per request: BENCH_PAIRS requests each way at 1 client, interleaved plain/OHTTP so that both
 * halves of a pair see the same machine state; the figure is the median of the pairs' differences.
 * Cold start: a generated model of BENCH_COLD_BYTES (default 1 GiB) from a sealed file to the first
 * token, against the same model from its plaintext file, each in a fresh process. "Cold" means
 * nothing cached, as on a freshly started TEE VM: before each run both files are dropped from the
 * page cache (`dd iflag=nocache count=0`, posix_fadvise DONTNEED: no root needed). The same runs with
 * the files left in the page cache are reported too (`*_warm_cache`).
 * The last line is one JSON object: throughput_ratio (the lower of c=1 and c=8), added_latency_ms,
 * cold_start_ratio, model_bytes, and the figures behind them.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const dist = new URL('../dist/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// llama.cpp's worker threads spin; with the load generator on the same two cores, one thread is steadier.
const THREADS = Number(process.env.BENCH_THREADS ?? 1);
// Read before any pinning: availableParallelism() follows this process's own CPU mask.
const CPUS = availableParallelism();

const role = process.argv[2];
if (role === 'server') await serverRole(process.argv[3], Number(process.argv[4]));
else if (role === 'cold-plain' || role === 'cold-sealed')
  await coldRole(role, process.argv[3], process.argv[4]);
else await main();

async function serverRole(modelPath, parallel) {
  const { loadLlamaEngine } = await load('infer/engine/llama.js');
  const { startInferenceServer } = await load('infer/server.js');
  const { RequestQueue } = await load('infer/queue.js');
  const { InsecureSampleAttester } = await load('tee/evidence/sample.js');
  const engine = await loadLlamaEngine({ path: modelPath, parallel, gpu: false, threads: THREADS });
  const server = await startInferenceServer({
    models: [
      {
        id: 'bench',
        engine,
        digest: `sha256:${'0'.repeat(64)}`,
        format: 'gguf',
        created: 0,
        queue: new RequestQueue({ concurrency: parallel, maxQueued: 256 }),
      },
    ],
    tee: { cpu: new InsecureSampleAttester() },
    ear: null,
    software: { name: 'cloister', version: 'bench', digest: `sha256:${'0'.repeat(64)}` },
    allowPlaintext: true,
    host: '127.0.0.1',
    port: 0,
    log,
  });
  process.stdout.write(`${server.url}\n`);
}

async function coldRole(role, file, keyFile) {
  const t0 = performance.now();
  const { realEngines } = await load('infer/engines.js');
  const loaders = realEngines({ gpu: false, parallel: 1, threads: THREADS });
  let engine;
  if (role === 'cold-plain') {
    engine = await loaders.gguf(file);
  } else {
    const { loadSealedModel } = await load('infer/load.js');
    const { PrivateDir } = await load('tee/private-dir.js');
    const { keyFromJwk } = await load('seal/keys.js');
    const { readFile } = await import('node:fs/promises');
    const key = keyFromJwk(await readFile(keyFile, 'utf8'), keyFile);
    const dir = await PrivateDir.create({});
    ({ engine } = await loadSealedModel({
      file,
      key: async () => key,
      dir: dir.path,
      loaders,
      log: () => {},
    }));
  }
  const ac = new AbortController();
  let first;
  await engine.complete(
    'Hello',
    { maxTokens: 1, temperature: 0, topP: 1, stop: [], signal: ac.signal },
    () => {
      first ??= performance.now();
    },
  );
  first ??= performance.now();
  process.stdout.write(`${JSON.stringify({ ms: first - t0 })}\n`);
  process.exit(0);
}

function child(args) {
  return spawn(process.execPath, [new URL(import.meta.url).pathname, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
}

/**
 * The server on the last CPU and this process (the clients) on the others, when taskset exists and
 * there are at least two: then the clients' work does not land in the middle of a token's evaluation,
 * and the noise between requests drops to where a millisecond can be seen.
 */
function pinnedServer(args) {
  const cpus = CPUS;
  if (cpus < 2 || spawnSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' }).status !== 0)
    return child(args);
  spawnSync('taskset', ['-pc', `0-${cpus - 2}`, String(process.pid)], { stdio: 'ignore' });
  log(`server pinned to CPU ${cpus - 1}, clients to CPUs 0-${cpus - 2}`);
  return spawn(
    'taskset',
    ['-c', String(cpus - 1), process.execPath, new URL(import.meta.url).pathname, ...args],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
}

async function firstLine(p) {
  let buf = '';
  for await (const chunk of p.stdout) {
    buf += chunk;
    if (buf.includes('\n')) return buf.slice(0, buf.indexOf('\n'));
  }
  throw new Error('child ended without output');
}

async function streamOnce(f, url, prompt, maxTokens) {
  const t0 = performance.now();
  const res = await f(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'bench',
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
  const decoder = new TextDecoder();
  let buf = '';
  let tokens = 0;
  for await (const piece of res.body) {
    buf += decoder.decode(piece, { stream: true });
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      // An event's data line; the server pads events with a comment line, which readers skip.
      const line = event.split('\n').find((l) => l.startsWith('data: {'));
      if (!line) continue;
      const e = JSON.parse(line.slice(6));
      if (e.usage) tokens = e.usage.completion_tokens;
    }
  }
  return { ms: performance.now() - t0, tokens };
}

async function round1(f, url, concurrency, perClient, maxTokens) {
  const t0 = performance.now();
  const lat = [];
  let tokens = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, c) => {
      for (let i = 0; i < perClient; i++) {
        const r = await streamOnce(f, url, `Request ${c}-${i}: tell me about the`, maxTokens);
        lat.push(r.ms);
        tokens += r.tokens;
      }
    }),
  );
  return { tokensPerS: tokens / ((performance.now() - t0) / 1000), latencyMs: median(lat) };
}

async function main() {
  const { writeTinyLlamaGguf } = await load('infer/testing/gguf-node.js');
  const { sealFile } = await load('seal/node.js');
  const { generateKek, kekToJwk } = await load('seal/keys.js');
  const { confidentialFetch } = await load('client/fetch.js');
  const { nodeBackend } = await load('ohttp/node.js');
  const { parseClientPolicy } = await load('client/policy.js');
  const { offlineSource } = await load('attest/collateral/index.js');
  const dir = mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), 'cloister-bench-infer-'));
  const coldBytes = Number(process.env.BENCH_COLD_BYTES ?? 2 ** 30);
  const hotBytes = Number(process.env.BENCH_HOT_BYTES ?? 64 * 2 ** 20);
  const maxTokens = Number(process.env.BENCH_TOKENS ?? 32);
  let server;
  try {
    // Throughput and latency.
    const hot = join(dir, 'hot.gguf');
    await writeTinyLlamaGguf(hot, { targetBytes: hotBytes, seed: 7 });
    log(`throughput model: ${statSync(hot).size} bytes`);
    server = pinnedServer(['server', hot, '8']);
    const url = await firstLine(server);
    const plain = fetch;
    const ohttp = confidentialFetch({
      url,
      policy: parseClientPolicy({ tees: ['sample'], minStatus: 'warning', fresh: false }),
      collateral: offlineSource,
      ohttp: nodeBackend,
    });
    await ohttp.server();
    await round1(plain, url, 2, 1, 4); // warm both paths
    await round1(ohttp, url, 2, 1, 4);
    // Each round runs both ways back to back (order alternating), and the ratio is taken within the
    // round, so the machine's drift between rounds cancels out; the figure is the median over rounds.
    const res = { plain: { 1: [], 8: [] }, ohttp: { 1: [], 8: [] } };
    const ratios = { 1: [], 8: [] };
    const rounds = Number(process.env.BENCH_ROUNDS ?? 6);
    for (let r = 0; r < rounds; r++) {
      // One client: single requests interleaved ABBA (plain, OHTTP, OHTTP, plain, …), so drift
      // within the round hits both ways alike; each way's tokens/s is its tokens over its time.
      const one = { plain: { tokens: 0, ms: 0, lat: [] }, ohttp: { tokens: 0, ms: 0, lat: [] } };
      for (let i = 0; i < 8; i++) {
        const name = (i % 4 === 0 || i % 4 === 3) === (r % 2 === 0) ? 'plain' : 'ohttp';
        const x = await streamOnce(
          name === 'plain' ? plain : ohttp,
          url,
          `Request ${i}: tell me about the`,
          maxTokens,
        );
        one[name].tokens += x.tokens;
        one[name].ms += x.ms;
        one[name].lat.push(x.ms);
      }
      for (const name of ['plain', 'ohttp'])
        res[name][1].push({
          tokensPerS: one[name].tokens / (one[name].ms / 1000),
          latencyMs: median(one[name].lat),
        });
      ratios[1].push(res.ohttp[1].at(-1).tokensPerS / res.plain[1].at(-1).tokensPerS);
      log(
        `round ${r} c=1: plain ${round(res.plain[1].at(-1).tokensPerS, 1)} tok/s, ohttp ${round(res.ohttp[1].at(-1).tokensPerS, 1)} tok/s`,
      );
      // Eight clients: both ways back to back, the order alternating between rounds.
      const got = {};
      for (const [name, f] of r % 2
        ? [
            ['ohttp', ohttp],
            ['plain', plain],
          ]
        : [
            ['plain', plain],
            ['ohttp', ohttp],
          ]) {
        got[name] = await round1(f, url, 8, 2, maxTokens);
        res[name][8].push(got[name]);
      }
      ratios[8].push(got.ohttp.tokensPerS / got.plain.tokensPerS);
      log(
        `round ${r} c=8: plain ${round(got.plain.tokensPerS, 1)} tok/s, ohttp ${round(got.ohttp.tokensPerS, 1)} tok/s`,
      );
    }
    const pairs = Number(process.env.BENCH_PAIRS ?? 60);
    const diffs = [];
    for (let i = 0; i < pairs; i++) {
      const order = i % 2 ? [ohttp, plain] : [plain, ohttp];
      const [a, b] = [
        await streamOnce(order[0], url, `Pair ${i}: once upon a`, maxTokens),
        await streamOnce(order[1], url, `Pair ${i}: once upon a`, maxTokens),
      ];
      const [p, o] = i % 2 ? [b, a] : [a, b];
      diffs.push(o.ms - p.ms);
    }
    const sorted = [...diffs].sort((a, b) => a - b);
    const iqr = sorted[Math.floor(pairs * 0.75)] - sorted[Math.floor(pairs * 0.25)];
    log(
      `added latency per request, median of ${pairs} pairs: ${round(median(diffs), 2)} ms (IQR ${round(iqr, 2)} ms)`,
    );
    server.kill();
    server = undefined;
    // The cold starts run unpinned, each in a fresh process, like a server starting.
    spawnSync('taskset', ['-pc', `0-${CPUS - 1}`, String(process.pid)], {
      stdio: 'ignore',
    });
    const tps = (name, c) => median(res[name][c].map((x) => x.tokensPerS));
    const latency = (name) => median(res[name][1].map((x) => x.latencyMs));
    const ratio1 = median(ratios[1]);
    const ratio8 = median(ratios[8]);

    // Cold start: sealed model → first token vs plaintext model → first token.
    const cold = join(dir, 'cold.gguf');
    log(`writing a ${coldBytes}-byte model`);
    await writeTinyLlamaGguf(cold, { targetBytes: coldBytes, seed: 9 });
    const modelBytes = statSync(cold).size;
    const kek = generateKek('kbs:///bench/models/kek');
    const keyFile = join(dir, 'kek.jwk');
    await writeFile(keyFile, JSON.stringify(kekToJwk(kek)));
    log('sealing it');
    await sealFile(cold, `${cold}.sealed`, { recipients: [{ type: 'kbs', uri: kek.uri, kek: kek.secret }] });
    // The files were just written: flush them, or their writeback competes with the starts below.
    spawnSync('sync', { stdio: 'ignore' });
    const evict = () => {
      for (const f of [cold, `${cold}.sealed`]) {
        const r = spawnSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0'], { stdio: 'ignore' });
        if (r.status !== 0) throw new Error(`dd could not drop ${f} from the page cache`);
      }
    };
    const coldMs = { plain: [], sealed: [], plainWarm: [], sealedWarm: [] };
    for (let r = 0; r < 3; r++) {
      for (const kind of r % 2 ? ['sealed', 'plain'] : ['plain', 'sealed']) {
        for (const warm of [false, true]) {
          if (!warm) evict();
          const p = child(
            kind === 'plain' ? ['cold-plain', cold] : ['cold-sealed', `${cold}.sealed`, keyFile],
          );
          const { ms } = JSON.parse(await firstLine(p));
          coldMs[warm ? `${kind}Warm` : kind].push(ms);
          log(`cold start ${kind}${warm ? ' (files in the page cache)' : ''}: ${round(ms, 0)} ms`);
        }
      }
    }
    const out = {
      throughput_ratio: round(Math.min(ratio1, ratio8)),
      added_latency_ms: round(median(diffs)),
      added_latency_iqr_ms: round(iqr),
      cold_start_ratio: round(median(coldMs.sealed) / median(coldMs.plain)),
      model_bytes: modelBytes,
      tokens_per_s_plain_c1: round(tps('plain', 1), 1),
      tokens_per_s_ohttp_c1: round(tps('ohttp', 1), 1),
      tokens_per_s_plain_c8: round(tps('plain', 8), 1),
      tokens_per_s_ohttp_c8: round(tps('ohttp', 8), 1),
      throughput_ratio_c1: round(ratio1),
      throughput_ratio_c8: round(ratio8),
      latency_ms_plain_c1: round(latency('plain'), 2),
      latency_ms_ohttp_c1: round(latency('ohttp'), 2),
      cold_start_ms_plain: round(median(coldMs.plain), 0),
      cold_start_ms_sealed: round(median(coldMs.sealed), 0),
      cold_start_ratio_warm_cache: round(median(coldMs.sealedWarm) / median(coldMs.plainWarm)),
      cold_start_ms_plain_warm_cache: round(median(coldMs.plainWarm), 0),
      cold_start_ms_sealed_warm_cache: round(median(coldMs.sealedWarm), 0),
      tokens_per_request: maxTokens,
    };
    console.log(JSON.stringify(out));
  } finally {
    server?.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}
