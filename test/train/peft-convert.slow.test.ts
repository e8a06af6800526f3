/**
 * `cloister lora convert` against an independent implementation: a plain-PyTorch script
 * (peft_fixture.py, Debian's python3-torch) writes a PEFT-layout adapter for a tiny llama base in
 * Hugging Face layout and computes the Hugging Face llama forward pass with it; the converter turns
 * the adapter into a GGUF adapter, llama.cpp (node-llama-cpp) runs the GGUF base with it, and the two
 * next-token log-probabilities must agree (max |Δ| ≤ 1e-3). The base alone is compared too, so a
 * wrong base layout and a wrong adapter conversion fail apart.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Llama, LlamaModel, Token } from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { toGgmlOrder } from '../../src/train/llama/gguf.js';
import { encode, writeLlamaGguf } from '../../src/train/llama/index.js';
import { paramSpecs, RMS_EPS, ROPE_BASE } from '../../src/train/llama/model.js';
import { createLoraConverter } from '../../src/train/lora/convert.js';
import { permuteRows } from '../../src/train/lora/peft.js';
import { Rng } from '../../src/util/prng.js';
import { compareLogProbs, llamaCppLogProbs, testLlama } from './llamacpp.js';
import { type SafeTensorIn, SHAPE, writeSafetensors } from './peft-fixtures.js';
import { PYTHON, pythonCannot } from './python.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 300_000 });

const cannot = pythonCannot('import torch');
if (cannot && process.env.CLOISTER_REQUIRE_TORCH === '1') throw new Error(cannot);

const SCRIPT = new URL('./peft_fixture.py', import.meta.url).pathname;
const PROBE = 'The quick brown fox, hello!\nÜber naïve café… 你好 "ok"? The end of a longer probe.';
const VOCAB = SHAPE.vocab;

/** GGUF name → Hugging Face name of the tiny base's tensors. */
function hfName(gguf: string): string {
  const blk = /^blk\.(\d+)\.(\w+)\.weight$/.exec(gguf);
  if (!blk)
    return {
      'token_embd.weight': 'model.embed_tokens.weight',
      'output_norm.weight': 'model.norm.weight',
      'output.weight': 'lm_head.weight',
    }[gguf]!;
  const module: Record<string, string> = {
    attn_norm: 'input_layernorm',
    attn_q: 'self_attn.q_proj',
    attn_k: 'self_attn.k_proj',
    attn_v: 'self_attn.v_proj',
    attn_output: 'self_attn.o_proj',
    ffn_norm: 'post_attention_layernorm',
    ffn_gate: 'mlp.gate_proj',
    ffn_up: 'mlp.up_proj',
    ffn_down: 'mlp.down_proj',
  };
  return `model.layers.${blk[1]}.${module[blk[2]!]}.weight`;
}

/** The inverse of convert_hf_to_gguf's permute: GGUF row h·d + 2i + j goes back to HF row h·d + j·d/2 + i. */
function unpermuteRows(values: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(values.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < d / 2; i++)
      for (let j = 0; j < 2; j++)
        out.set(
          values.subarray((h * d + 2 * i + j) * cols, (h * d + 2 * i + j + 1) * cols),
          (h * d + j * (d / 2) + i) * cols,
        );
  return out;
}

describe.skipIf(cannot !== undefined)(
  `PEFT adapter → GGUF adapter, llama.cpp against PyTorch (${cannot ?? PYTHON})`,
  () => {
    let dir: string;
    let basePath: string;
    let hfDir: string;
    let llama: Llama;
    let model: LlamaModel;
    const tokens = Array.from(encode(PROBE)) as Token[];

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'cloister-peft-convert-'));
      basePath = join(dir, 'base.gguf');
      hfDir = join(dir, 'hf');
      // Weights of scale 0.3: attention peaked and position-dependent, so a wrong RoPE layout shows.
      const rng = new Rng(77);
      const specs = paramSpecs(SHAPE);
      const params = specs.map((spec) =>
        Float32Array.from({ length: spec.shape.reduce((a, b) => a * b, 1) }, () =>
          spec.init === 'ones' ? 1 + 0.2 * rng.normal() : 0.3 * rng.normal(),
        ),
      );
      writeFileSync(basePath, writeLlamaGguf({ shape: SHAPE, context: 256, params, name: 'tiny base' }));
      // The same base in Hugging Face layout: [out][in] rows, q and k rows back in rotate-half order.
      const hf: SafeTensorIn[] = specs.map((spec, i) => {
        let values: Float32Array = params[i]!;
        let shape = spec.shape;
        if (spec.transposed) {
          const [rows, cols] = spec.shape as [number, number];
          values = toGgmlOrder(values, rows, cols);
          shape = [cols, rows];
          if (spec.name.includes('attn_q')) values = unpermuteRows(values, cols, rows, SHAPE.heads);
          if (spec.name.includes('attn_k')) values = unpermuteRows(values, cols, rows, SHAPE.kvHeads);
        }
        return { name: hfName(spec.name), shape, values };
      });
      const q = hf.find((t) => t.name === 'model.layers.0.self_attn.q_proj.weight')!;
      expect(permuteRows(unpermuteRows(q.values, 32, 32, 4), 32, 32, 4, 'q')).toEqual(q.values);
      mkdirSync(hfDir);
      writeFileSync(join(hfDir, 'model.safetensors'), writeSafetensors(hf));
      writeFileSync(
        join(hfDir, 'config.json'),
        JSON.stringify({
          architectures: ['LlamaForCausalLM'],
          hidden_size: SHAPE.dim,
          num_attention_heads: SHAPE.heads,
          num_key_value_heads: SHAPE.kvHeads,
          intermediate_size: SHAPE.ffn,
          num_hidden_layers: SHAPE.layers,
          vocab_size: SHAPE.vocab,
          rms_norm_eps: RMS_EPS,
          rope_theta: ROPE_BASE,
          tie_word_embeddings: false,
        }),
      );
      llama = await testLlama();
      model = await llama.loadModel({ modelPath: basePath });
    });
    afterAll(async () => {
      await model?.dispose();
      await llama?.dispose();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    function torchRows(path: string): Float64Array[] {
      const b = readFileSync(path);
      const all = new Float64Array(b.buffer, b.byteOffset, b.byteLength / 8);
      expect(all.length).toBe(tokens.length * VOCAB);
      return tokens.map((_, i) => all.slice(i * VOCAB, (i + 1) * VOCAB));
    }

    const llamaCpp = (adapterPath?: string) => llamaCppLogProbs(model, tokens, VOCAB, adapterPath);
    const maxDiff = (a: Float64Array[], b: Float64Array[]) => compareLogProbs(a, b).maxDiff;

    it('gives the base’s log-probabilities without an adapter (the HF layout of the base is right)', async () => {
      const out = join(dir, 'plain');
      runFixture(out, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] });
      const diff = maxDiff(await llamaCpp(), torchRows(join(out, 'logprobs_base.f64')));
      console.log(`base alone: max |Δ log p| llama.cpp vs PyTorch = ${diff.toExponential(2)}`);
      expect(diff).toBeLessThanOrEqual(1e-3);
    });

    it.each([
      [
        'r 4, alpha 8 on q, k, v, o, gate, down',
        {
          r: 4,
          lora_alpha: 8,
          target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'down_proj'],
        },
      ],
      [
        'rsLoRA, rank_pattern and alpha_pattern on q, k, v, o, up, down',
        {
          r: 4,
          lora_alpha: 6,
          use_rslora: true,
          rank_pattern: { 'model.layers.1.self_attn.q_proj': 2, down_proj: 8 },
          alpha_pattern: { k_proj: 3 },
          target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj'],
        },
      ],
    ])('llama.cpp with the converted adapter gives PyTorch’s log-probabilities: %s', async (label, spec) => {
      const out = join(dir, label.replace(/\W+/g, '-'));
      runFixture(out, spec);
      const converter = await createLoraConverter({
        inputs: [
          { name: 'adapter', path: join(out, 'adapter_model.safetensors') },
          { name: 'config', path: join(out, 'adapter_config.json') },
        ],
        base: { name: 'base.gguf', path: basePath },
        hyperparameters: {},
        seed: 0,
      });
      const [file] = await converter.exportModel();
      converter.dispose();
      const adapterPath = join(out, 'adapter.gguf');
      writeFileSync(adapterPath, file!.bytes);
      const torchAdapter = torchRows(join(out, 'logprobs_adapter.f64'));
      // The adapter matters: without it the log-probabilities are far from the adapted ones.
      const effect = maxDiff(torchAdapter, torchRows(join(out, 'logprobs_base.f64')));
      const diff = maxDiff(await llamaCpp(adapterPath), torchAdapter);
      console.log(
        `${label}: adapter effect ${effect.toFixed(3)}, max |Δ log p| llama.cpp vs PyTorch = ${diff.toExponential(2)}`,
      );
      expect(effect).toBeGreaterThan(0.5);
      expect(diff).toBeLessThanOrEqual(1e-3);
    });

    function runFixture(out: string, spec: Record<string, unknown>): void {
      execFileSync(PYTHON, [SCRIPT, hfDir, out, JSON.stringify({ tokens, seed: 5, scale_b: 0.3, ...spec })], {
        stdio: ['ignore', 'inherit', 'inherit'],
        timeout: 240_000,
        env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
      });
    }
  },
);
