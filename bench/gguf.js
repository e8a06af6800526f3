#!/usr/bin/env node
/**
 * A big generated GGUF model, end to end (`npm run build && node bench/gguf.js`): how long writing
 * it takes, then loading it into the llama.cpp engine and its first token. BENCH_BYTES sets the
 * model size (default 1 GiB), BENCH_TYPE the tensor type (F16), BENCH_THREADS the CPU threads (1),
 * BENCH_GPU=auto lets llama.cpp use a GPU. The load is measured with the file in the page cache
 * (just written), so it is mmap and graph set-up, not disk reads. The last line is one JSON object.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const { tinyLlamaGguf } = await import('../dist/infer/testing/gguf.js');
const { writeTinyLlamaGguf } = await import('../dist/infer/testing/gguf-node.js');
const { loadLlamaEngine } = await import('../dist/infer/engine/llama.js');

const targetBytes = Number(process.env.BENCH_BYTES ?? 1024 ** 3);
const tensorType = process.env.BENCH_TYPE ?? 'F16';
const threads = Number(process.env.BENCH_THREADS ?? 1);
const gpu = process.env.BENCH_GPU === 'auto' ? 'auto' : false;
const dir = mkdtempSync(join(process.env.BENCH_DIR ?? '/tmp', 'cloister-bench-gguf-'));
const path = join(dir, 'model.gguf');
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);
const s = (t0) => Math.round(performance.now() - t0) / 1000;

try {
  let t = performance.now();
  const plan = tinyLlamaGguf({ targetBytes, tensorType });
  let n = 0;
  for (const c of plan.chunks()) n += c.length;
  const generateS = s(t);
  log(`generated ${n} bytes in memory in ${generateS} s`, JSON.stringify(plan.shape));

  t = performance.now();
  await writeTinyLlamaGguf(path, { targetBytes, tensorType });
  const writeS = s(t);
  log(`wrote ${path} in ${writeS} s`);

  t = performance.now();
  const engine = await loadLlamaEngine({ path, gpu, threads });
  const loadS = s(t);
  let first;
  const t1 = performance.now();
  const params = { maxTokens: 16, temperature: 0, topP: 1, stop: [], signal: new AbortController().signal };
  const r = await engine.complete('the answer is', params, () => {
    first ??= performance.now();
  });
  const firstTokenS = Math.round(first - t1) / 1000;
  const perTokenMs = Math.round((performance.now() - first) / (r.completionTokens - 1));
  await engine.close();
  log(`loaded in ${loadS} s, first token after ${firstTokenS} s, then ${perTokenMs} ms/token`);
  console.log(
    JSON.stringify({
      bytes: plan.size,
      tensorType,
      shape: plan.shape,
      threads,
      gpu,
      generateS,
      writeS,
      loadS,
      firstTokenS,
      loadPlusFirstTokenS: Math.round((loadS + firstTokenS) * 1000) / 1000,
      perTokenMs,
    }),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
