import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createLoraConverter } from '../../src/train/lora/convert.js';
import { LoraError } from '../../src/train/lora/errors.js';
import { peftToLoraAdapter, permuteRows } from '../../src/train/lora/peft.js';
import {
  checkLoraAgainstBase,
  type GgufInfo,
  loraAdapterShape,
  readGgufInfo,
  readLoraAdapter,
  writeGguf,
} from '../../src/wire/index.js';
import {
  peftConfig,
  peftTensors,
  type SafeTensorIn,
  SHAPE,
  tinyBase,
  writeSafetensors,
} from './peft-fixtures.js';

const base = tinyBase();
const hd = SHAPE.dim / SHAPE.heads;

function convert(tensors: SafeTensorIn[], config: Record<string, unknown> = {}, info: GgufInfo = base.info) {
  return peftToLoraAdapter(writeSafetensors(tensors), peftConfig(config), { info });
}

/** The refusal's message, checking it is one line of code bad-adapter. */
function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(LoraError);
    expect((e as LoraError).code).toBe('bad-adapter');
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error('expected a refusal');
}

const maxDiff = (x: Float32Array, y: Float32Array) =>
  x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i]!)), 0);

const find = (tensors: SafeTensorIn[], name: string) => tensors.find((t) => t.name === name)!;

describe('peftToLoraAdapter', () => {
  it('maps every llama projection to its GGUF tensor, A as it is, B of q and k permuted per head', () => {
    const tensors = peftTensors({
      modules: [
        'self_attn.q_proj',
        'self_attn.k_proj',
        'self_attn.v_proj',
        'self_attn.o_proj',
        'mlp.gate_proj',
        'mlp.up_proj',
        'mlp.down_proj',
      ],
    });
    const adapter = convert(tensors);
    expect(adapter.architecture).toBe('llama');
    expect(adapter.alpha).toBe(16);
    expect(adapter.pairs.map((p) => p.target)).toEqual(
      [0, 1].flatMap((l) =>
        ['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down'].map(
          (m) => `blk.${l}.${m}.weight`,
        ),
      ),
    );
    const pair = (t: string) => adapter.pairs.find((p) => p.target === t)!;
    const hf = (m: string, w: 'A' | 'B') =>
      find(tensors, `base_model.model.model.layers.1.${m}.lora_${w}.weight`);
    // Unpermuted: v, o and the MLP, both halves; A of q and k.
    for (const [m, t] of [
      ['self_attn.v_proj', 'attn_v'],
      ['mlp.gate_proj', 'ffn_gate'],
      ['mlp.down_proj', 'ffn_down'],
    ] as const) {
      expect(pair(`blk.1.${t}.weight`).a).toEqual(hf(m, 'A').values);
      expect(pair(`blk.1.${t}.weight`).b).toEqual(hf(m, 'B').values);
    }
    expect(pair('blk.1.attn_q.weight').a).toEqual(hf('self_attn.q_proj', 'A').values);
    // q: 4 heads of 8 rows; GGUF row h·8 + 2i + j is HF row h·8 + 4j + i (rank 4 columns per row).
    const qB = pair('blk.1.attn_q.weight').b;
    const hfQ = hf('self_attn.q_proj', 'B').values;
    const r = 4;
    for (let h = 0; h < SHAPE.heads; h++)
      for (let i = 0; i < hd / 2; i++)
        for (let j = 0; j < 2; j++)
          expect(qB.subarray((h * hd + 2 * i + j) * r, (h * hd + 2 * i + j + 1) * r)).toEqual(
            hfQ.subarray((h * hd + j * (hd / 2) + i) * r, (h * hd + j * (hd / 2) + i + 1) * r),
          );
    // k: the same per key/value head (2 of them), and not the identity.
    const kB = pair('blk.1.attn_k.weight').b;
    expect(kB).toEqual(permuteRows(hf('self_attn.k_proj', 'B').values, 16, r, SHAPE.kvHeads, 'k'));
    expect(kB).not.toEqual(hf('self_attn.k_proj', 'B').values);
    checkLoraAgainstBase(adapter, base.info);
  });

  it('permuteRows is convert_hf_to_gguf.py permute on a tiny example', () => {
    // reshape(1 head, 2, 2, 1).swapaxes(1, 2): rows [0 1 2 3] → [0 2 1 3].
    expect(Array.from(permuteRows(Float32Array.of(0, 1, 2, 3), 4, 1, 1, 'q'))).toEqual([0, 2, 1, 3]);
    // Two heads of 4 rows, two columns.
    expect(
      Array.from(
        permuteRows(
          Float32Array.from({ length: 16 }, (_, i) => i),
          8,
          2,
          2,
          'q',
        ),
      ),
    ).toEqual([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
  });

  it('takes the adapter-name infix (lora_A.default.weight) and F16/BF16 values', () => {
    const plain = convert(peftTensors());
    expect(convert(peftTensors({ infix: 'default' }))).toEqual(plain);
    const f16 = convert(peftTensors().map((t) => ({ ...t, dtype: 'F16' })));
    const bf16 = convert(peftTensors().map((t) => ({ ...t, dtype: 'BF16' })));
    for (const [i, p] of plain.pairs.entries()) {
      for (const x of [f16, bf16]) {
        const q = x.pairs[i]!;
        expect(q.target).toBe(p.target);
        expect(maxDiff(q.a, p.a)).toBeLessThan(2e-3);
        expect(maxDiff(q.b, p.b)).toBeLessThan(2e-3);
      }
    }
  });

  it('writes rsLoRA as alpha·√r, so llama.cpp’s alpha/r is PEFT’s alpha/√r', () => {
    const a = convert(peftTensors(), { use_rslora: true, lora_alpha: 8 });
    expect(a.alpha).toBeCloseTo(8 * 2, 12);
    expect(a.alpha / 4).toBeCloseTo(8 / Math.sqrt(4), 12);
    expect(a.pairs).toEqual(convert(peftTensors(), { lora_alpha: 8 }).pairs);
  });

  it('handles rank_pattern and alpha_pattern: each module’s PEFT scale, its B carrying any difference', () => {
    // Layer 0 q/k/v/o at rank 4, layer 1's at rank 2 (rank_pattern), down_proj with alpha 4 (alpha_pattern).
    const r4 = peftTensors({ modules: ['self_attn.q_proj', 'mlp.down_proj'], r: 4 }).filter((t) =>
      t.name.includes('layers.0.'),
    );
    const r2 = peftTensors({ modules: ['self_attn.q_proj'], r: 2, seed: 9 }).filter((t) =>
      t.name.includes('layers.1.'),
    );
    const adapter = convert([...r4, ...r2], {
      r: 4,
      lora_alpha: 16,
      rank_pattern: { 'model.layers.1.self_attn.q_proj': 2 },
      alpha_pattern: { down_proj: 4 },
    });
    const pair = (t: string) => adapter.pairs.find((p) => p.target === t)!;
    const delta = (t: string) => {
      const p = pair(t);
      return (adapter.alpha / p.rank) * p.b[0]!; // llama.cpp's scale times B's first value
    };
    expect(pair('blk.1.attn_q.weight').rank).toBe(2);
    // q of layer 1: PEFT scale 16/2 = llama.cpp's 16/2, B unchanged (row 0 is row 0 after the permutation).
    expect(delta('blk.1.attn_q.weight')).toBeCloseTo(
      8 * find(r2, 'base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight').values[0]!,
      5,
    );
    // down of layer 0: PEFT scale 4/4 = 1, llama.cpp's 16/4 = 4, so B is written ÷ 4.
    expect(delta('blk.0.ffn_down.weight')).toBeCloseTo(
      find(r4, 'base_model.model.model.layers.0.mlp.down_proj.lora_B.weight').values[0]!,
      6,
    );
  });

  describe('refuses, in one line', () => {
    const ok = peftTensors();
    it.each([
      [{ use_dora: true }, /use_dora is true: DoRA/],
      [{ modules_to_save: ['lm_head'] }, /modules_to_save is a list/],
      [{ fan_in_fan_out: true }, /fan_in_fan_out is true/],
      [{ bias: 'lora_only' }, /bias is a string other than the accepted ones: bias must be "none"/],
      [{ lora_bias: true }, /lora_bias is true/],
      [{ layer_replication: [[0, 2]] }, /layer_replication/],
      [{ r: 0 }, /r is 0; a LoRA rank is a whole number ≥ 1/],
      [{ lora_alpha: Number.NaN }, /lora_alpha is null/],
      [{ lora_alpha: 0 }, /lora_alpha is 0; it must be a number > 0/],
      [{ peft_type: 'IA3' }, /peft_type is a string other than the accepted ones; only "LORA"/],
      [{ target_modules: ['q_proj', 'foo_proj'] }, /unknown target module foo_proj/],
      [{ rank_pattern: { 'q_proj(': 2 } }, /a rank_pattern key is not a module name/],
      [{ rank_pattern: { '(.*.*)*x': 2 } }, /a rank_pattern key is not a module name/],
      [{ rank_pattern: { q_proj: 0 } }, /rank_pattern.q_proj is 0/],
      [{ r: 8 }, /lora_A has rank 4 but adapter_config.json says 8/],
    ])('config %j', (config, message) => {
      expect(refusal(() => convert(ok, config))).toMatch(message);
    });

    it('a config that is not JSON', () => {
      expect(
        refusal(() => peftToLoraAdapter(writeSafetensors(ok), new TextEncoder().encode('{r: 4'), base)),
      ).toMatch(/adapter_config.json is not JSON/);
    });

    it('an unknown target module among the tensors', () => {
      const foo = ok.map((t) => ({ ...t, name: t.name.replace('mlp.down_proj', 'mlp.foo_proj') }));
      expect(refusal(() => convert(foo, { target_modules: null }))).toMatch(
        /^unknown target module mlp.foo_proj \(/,
      );
      const head = [
        { name: 'base_model.model.lm_head.lora_A.weight', shape: [4, 32], values: new Float32Array(128) },
        {
          name: 'base_model.model.lm_head.lora_B.weight',
          shape: [356, 4],
          values: new Float32Array(356 * 4),
        },
      ];
      expect(refusal(() => convert(head, { target_modules: null }))).toMatch(
        /^unknown target module lm_head/,
      );
    });

    it('rank 0 tensors', () => {
      const zero = peftTensors({ r: 0, modules: ['self_attn.v_proj'] });
      expect(refusal(() => convert(zero, { rank_pattern: {} }))).toMatch(/LoRA rank 0/);
    });

    it('NaN and infinite weights', () => {
      for (const [v, word] of [
        [Number.NaN, 'NaN'],
        [Number.POSITIVE_INFINITY, 'Infinity'],
      ] as const) {
        const t = peftTensors();
        t[3]!.values[5] = v;
        expect(refusal(() => convert(t))).toBe(`${t[3]!.name} has a weight that is ${word} (element 5)`);
      }
    });

    it('an adapter made for another base (shape, or a layer the base lacks)', () => {
      const wide = peftTensors({ shape: { ...SHAPE, dim: 64 } });
      expect(refusal(() => convert(wide))).toMatch(
        /q_proj is 64×64 \(out×in\), the base's blk.0.attn_q.weight is 32×32: made for another base/,
      );
      const deep = peftTensors({ shape: { ...SHAPE, layers: 3 } });
      expect(refusal(() => convert(deep))).toMatch(
        /adapts blk.2.attn_q.weight, which the base model does not have: made for another base/,
      );
    });

    it('a base of another architecture', () => {
      const gpt2 = readGgufInfo(
        writeGguf(
          [['general.architecture', { type: 'string', value: 'gpt2' }]],
          [{ name: 'x', dims: [2], type: 'F32', data: new Float32Array(2) }],
        ),
      );
      expect(refusal(() => convert(ok, {}, gpt2))).toMatch(/the base model is architecture "gpt2"/);
    });

    it('a tensor without its pair', () => {
      const noB = ok.filter(
        (t) => t.name !== 'base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight',
      );
      expect(refusal(() => convert(noB))).toBe(
        'base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight has no base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight beside it',
      );
      const noA = ok.filter((t) => t.name !== 'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight');
      expect(refusal(() => convert(noA))).toMatch(
        /down_proj.lora_B.weight has no .*down_proj.lora_A.weight beside it/,
      );
    });

    it('ranks of A and B that disagree', () => {
      const t = peftTensors({ modules: ['self_attn.v_proj'] });
      t[1] = { ...t[1]!, shape: [16, 2], values: t[1]!.values.subarray(0, 32) };
      expect(refusal(() => convert(t))).toMatch(/lora_A is \[4,32\] but lora_B is \[16,2\]: ranks differ/);
    });

    it('DoRA magnitude vectors, full module copies, embedding LoRA, foreign names', () => {
      const extra = (name: string) => [...ok, { name, shape: [4], values: new Float32Array(4) }];
      expect(
        refusal(() =>
          convert(extra('base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector')),
        ),
      ).toMatch(/DoRA/);
      expect(
        refusal(() => convert(extra('base_model.model.lm_head.modules_to_save.default.weight'))),
      ).toMatch(/modules_to_save/);
      expect(refusal(() => convert(extra('base_model.model.model.embed_tokens.lora_embedding_A')))).toMatch(
        /token embeddings/,
      );
      expect(refusal(() => convert(extra('model.layers.0.self_attn.q_proj.weight')))).toMatch(
        /is not a PEFT adapter tensor/,
      );
      expect(
        refusal(() => convert(extra('base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias'))),
      ).toMatch(/neither a lora_A nor a lora_B/);
    });

    it('a layer number written two ways (layers.1 and layers.01) does not adapt one tensor twice', () => {
      const t = peftTensors({ modules: ['self_attn.v_proj'] });
      const again = t.map((x) => ({ ...x, name: x.name.replace('layers.0.', 'layers.00.') }));
      expect(refusal(() => convert([...t, ...again]))).toMatch(/unknown target module/);
    });

    it('two adapters in one file', () => {
      const two = [...peftTensors({ infix: 'default' }), ...peftTensors({ infix: 'other' })];
      expect(refusal(() => convert(two))).toMatch(/mixes adapters \(default and other\)/);
    });

    it('dtypes other than F32/F16/BF16, and files that are not safetensors', () => {
      const i8 = ok.map((t, i) => (i === 0 ? { ...t, dtype: 'I8' } : t));
      expect(refusal(() => convert(i8))).toMatch(/is I8; adapters are read in F32, F16 or BF16/);
      const cfg = peftConfig();
      expect(refusal(() => peftToLoraAdapter(new Uint8Array(4), cfg, base))).toMatch(
        /not a safetensors file/,
      );
      const huge = new Uint8Array(16);
      new DataView(huge.buffer).setBigUint64(0, 1000n, true);
      expect(refusal(() => peftToLoraAdapter(huge, cfg, base))).toMatch(
        /header length 1000 exceeds the file/,
      );
      const whole = writeSafetensors(ok);
      const cut = whole.subarray(0, whole.length - 4);
      expect(refusal(() => peftToLoraAdapter(cut, cfg, base))).toMatch(/data_offsets do not fit/);
      expect(refusal(() => peftToLoraAdapter(writeSafetensors([]), cfg, base))).toMatch(
        /holds no LoRA tensors/,
      );
    });
  });
});

describe('the lora-convert built-in trainer', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-convert-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, bytes: Uint8Array) => {
    const path = join(dir, name);
    writeFileSync(path, bytes);
    return path;
  };
  const adapterPath = write('adapter_model.safetensors', writeSafetensors(peftTensors()));
  const configPath = write('adapter_config.json', peftConfig());
  const basePath = write('base.gguf', base.bytes);
  const inputs = [
    { name: 'adapter', path: adapterPath },
    { name: 'config', path: configPath },
  ];

  it('converts in zero steps and exports adapter.gguf that fits the base', async () => {
    const t = await createLoraConverter({
      inputs,
      base: { name: 'base', path: basePath },
      hyperparameters: {},
      seed: 0,
    });
    expect(t.name).toBe('lora-convert');
    expect(t.totalSteps).toBe(0);
    expect(t.completedSteps).toBe(0);
    // Per layer, rank 4: q 4·32 + 32·4, k and v 4·32 + 16·4, o 4·32 + 32·4, down 4·48 + 32·4.
    expect(await t.evaluate()).toEqual({
      lora_pairs: 10,
      lora_parameters: 2 * (256 + 192 + 192 + 256 + 320),
    });
    const state = t.saveState();
    t.loadState(state);
    expect(() => t.loadState(new Uint8Array(3))).toThrow(/not a lora-convert state/);
    await expect(t.step()).rejects.toThrow(/no training steps/);
    const files = await t.exportModel();
    expect(files.map((f) => f.name)).toEqual(['adapter.gguf']);
    const read = readLoraAdapter(files[0]!.bytes);
    expect(read).toEqual(peftToLoraAdapter(writeSafetensors(peftTensors()), peftConfig(), base));
    checkLoraAgainstBase(loraAdapterShape(readGgufInfo(files[0]!.bytes)), base.info);
    t.dispose();
  });

  it('refuses missing or unknown inputs, hyperparameters, no base, a base that is not GGUF', async () => {
    const b = { name: 'base', path: basePath };
    const fails = async (input: Parameters<typeof createLoraConverter>[0], code: string, message: RegExp) => {
      const e = await createLoraConverter(input).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(LoraError);
      expect((e as LoraError).code).toBe(code);
      expect((e as Error).message).toMatch(message);
    };
    await fails(
      { inputs: inputs.slice(1), base: b, hyperparameters: {}, seed: 0 },
      'bad-input',
      /named "adapter"/,
    );
    await fails(
      { inputs: inputs.slice(0, 1), base: b, hyperparameters: {}, seed: 0 },
      'bad-input',
      /named "config"/,
    );
    await fails(
      { inputs: [...inputs, { name: 'data', path: configPath }], base: b, hyperparameters: {}, seed: 0 },
      'bad-input',
      /input "data" is not one lora-convert reads/,
    );
    await fails(
      { inputs, base: b, hyperparameters: { steps: 3 }, seed: 0 },
      'bad-hyperparameter',
      /hyperparameters.steps is not known/,
    );
    await fails({ inputs, hyperparameters: {}, seed: 0 }, 'bad-model', /needs the base model/);
    await fails(
      { inputs, base: { name: 'base', path: configPath }, hyperparameters: {}, seed: 0 },
      'bad-model',
      /not a readable GGUF/,
    );
    await fails(
      {
        inputs: [
          { name: 'adapter', path: adapterPath },
          { name: 'config', path: write('bad.json', peftConfig({ use_dora: true })) },
        ],
        base: b,
        hyperparameters: {},
        seed: 0,
      },
      'bad-adapter',
      /use_dora/,
    );
  });
});
