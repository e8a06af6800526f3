import { describe, expect, it } from 'vitest';
import { tinyLlamaGguf } from '../../src/infer/testing/gguf.js';
import { GgufValueType, readGgufInfo } from '../../src/wire/gguf.js';
import { type GgufMetaValue, readTensorF32, writeGguf } from '../../src/wire/gguf-tensors.js';
import {
  checkLoraAgainstBase,
  type LoraAdapter,
  loraAdapterShape,
  loraScale,
  readLoraAdapter,
  writeLoraAdapter,
} from '../../src/wire/lora-adapter.js';

function pair(target: string, inputs: number, outputs: number, rank: number, fill = 0.5) {
  return {
    target,
    inputs,
    outputs,
    rank,
    a: Float32Array.from({ length: rank * inputs }, (_, i) => fill * Math.sin(i + 1)),
    b: Float32Array.from({ length: outputs * rank }, (_, i) => fill * Math.cos(i)),
  };
}

const base = { bytes: tinyLlamaGguf().bytes() };
const baseInfo = readGgufInfo(base.bytes);
const q = baseInfo.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!;
const adapter: LoraAdapter = {
  architecture: 'llama',
  alpha: 16,
  name: 'test',
  pairs: [pair('blk.0.attn_q.weight', q.dims[0]!, q.dims[1]!, 4)],
};

describe('GGUF LoRA adapters', () => {
  it('write the keys and tensor shapes llama.cpp expects, and read back the same values', () => {
    const bytes = writeLoraAdapter(adapter);
    const info = readGgufInfo(bytes);
    expect(info.metadata.get('general.type')).toBe('adapter');
    expect(info.metadata.get('adapter.type')).toBe('lora');
    expect(info.metadata.get('adapter.lora.alpha')).toBe(16);
    expect(info.architecture).toBe('llama');
    expect(info.tensors.map((t) => [t.name, t.dims])).toEqual([
      ['blk.0.attn_q.weight.lora_a', [q.dims[0], 4]],
      ['blk.0.attn_q.weight.lora_b', [4, q.dims[1]]],
    ]);
    const back = readLoraAdapter(bytes);
    expect(back.pairs[0]!.a).toEqual(adapter.pairs[0]!.a);
    expect(back.pairs[0]!.b).toEqual(adapter.pairs[0]!.b);
    checkLoraAgainstBase(loraAdapterShape(info), baseInfo);
  });

  it('F16 values round to half precision', () => {
    const back = readLoraAdapter(writeLoraAdapter(adapter, { type: 'F16' }));
    const a = adapter.pairs[0]!.a;
    for (let i = 0; i < a.length; i++) expect(Math.abs(back.pairs[0]!.a[i]! - a[i]!)).toBeLessThan(1e-3);
  });

  it('refuses an adapter for another architecture, another tensor, another shape', () => {
    const info = (a: LoraAdapter) => loraAdapterShape(readGgufInfo(writeLoraAdapter(a)));
    expect(() => checkLoraAgainstBase(info({ ...adapter, architecture: 'qwen2' }), baseInfo)).toThrow(
      /architecture "qwen2", the base model is "llama"/,
    );
    expect(() =>
      checkLoraAgainstBase(
        info({ ...adapter, pairs: [pair('blk.9.attn_q.weight', q.dims[0]!, q.dims[1]!, 2)] }),
        baseInfo,
      ),
    ).toThrow(/blk\.9\.attn_q\.weight, which the base model does not have/);
    expect(() =>
      checkLoraAgainstBase(
        info({ ...adapter, pairs: [pair('blk.0.attn_q.weight', q.dims[0]! * 2, q.dims[1]!, 2)] }),
        baseInfo,
      ),
    ).toThrow(/made for another base/);
  });

  it('refuses rank 0, NaN weights, a model that is not an adapter, a lone lora_a', () => {
    expect(() => writeLoraAdapter({ ...adapter, pairs: [pair('x.weight', 4, 4, 0)] })).toThrow(
      /rank must be at least 1/,
    );
    const nan = pair('blk.0.attn_q.weight', q.dims[0]!, q.dims[1]!, 2);
    nan.b[3] = Number.NaN;
    expect(() => writeLoraAdapter({ ...adapter, pairs: [nan] })).toThrow(
      expect.objectContaining({ code: 'not-finite' }),
    );
    // A NaN written by another tool is caught on reading.
    const forged = writeGguf(
      [
        ['general.architecture', { type: 'string', value: 'llama' }],
        ['general.type', { type: 'string', value: 'adapter' }],
        ['adapter.type', { type: 'string', value: 'lora' }],
        ['adapter.lora.alpha', { type: 'f32', value: 8 }],
      ],
      [
        { name: 'w.lora_a', dims: [4, 2], type: 'F32', data: new Float32Array(8) },
        {
          name: 'w.lora_b',
          dims: [2, 4],
          type: 'F32',
          data: Float32Array.of(0, 0, Number.NaN, 0, 0, 0, 0, 0),
        },
      ],
    );
    expect(() => readLoraAdapter(forged)).toThrow(/w: the adapter has a weight that is NaN/);
    expect(() => readLoraAdapter(base.bytes)).toThrow(expect.objectContaining({ code: 'not-adapter' }));
    const lone = writeGguf(
      [
        ['general.architecture', { type: 'string', value: 'llama' }],
        ['general.type', { type: 'string', value: 'adapter' }],
        ['adapter.type', { type: 'string', value: 'lora' }],
        ['adapter.lora.alpha', { type: 'f32', value: 8 }],
      ],
      [{ name: 'w.lora_a', dims: [4, 2], type: 'F32', data: new Float32Array(8) }],
    );
    expect(() => readLoraAdapter(lone)).toThrow(/w\.lora_a has no \.lora_b/);
    expect(() => readLoraAdapter(new Uint8Array(10))).toThrow(
      expect.objectContaining({ code: 'not-adapter' }),
    );
  });

  it('refuses adapter.lora.alpha stored as anything but float32 (llama.cpp would abort on it)', () => {
    const withAlpha = (alpha: GgufMetaValue, type: GgufMetaValue = { type: 'string', value: 'adapter' }) =>
      writeGguf(
        [
          ['general.architecture', { type: 'string', value: 'llama' }],
          ['general.type', type],
          ['adapter.type', { type: 'string', value: 'lora' }],
          ['adapter.lora.alpha', alpha],
        ],
        [
          { name: 'w.lora_a', dims: [4, 2], type: 'F32', data: new Float32Array(8) },
          { name: 'w.lora_b', dims: [2, 4], type: 'F32', data: new Float32Array(8) },
        ],
      );
    const info = readGgufInfo(withAlpha({ type: 'u32', value: 8 }));
    expect(info.metadataTypes.get('adapter.lora.alpha')).toBe(GgufValueType.UINT32);
    expect(info.metadataTypes.get('general.type')).toBe(GgufValueType.STRING);
    expect(() => readLoraAdapter(withAlpha({ type: 'u32', value: 8 }))).toThrow(
      expect.objectContaining({
        code: 'not-adapter',
        message: "the adapter's adapter.lora.alpha has GGUF type uint32; llama.cpp reads it only as float32",
      }),
    );
    expect(() => readLoraAdapter(withAlpha({ type: 'i32', value: 8 }))).toThrow(/GGUF type int32/);
    // A one-string array is not the string llama.cpp's gguf_get_val_str asserts either.
    expect(() =>
      readLoraAdapter(withAlpha({ type: 'f32', value: 8 }, { type: 'string[]', value: ['adapter'] })),
    ).toThrow(expect.objectContaining({ code: 'not-adapter' }));
    expect(readLoraAdapter(withAlpha({ type: 'f32', value: 8 })).alpha).toBe(8);
  });

  it('scale is s·alpha/rank, or s when alpha is 0 (as llama.cpp)', () => {
    expect(loraScale(16, 8)).toBe(2);
    expect(loraScale(16, 8, 0.5)).toBe(1);
    expect(loraScale(0, 8, 0.5)).toBe(0.5);
  });
});

describe('GGUF tensor values', () => {
  it('dequantise Q8_0 and Q4_0 blocks as ggml does, and BF16 exactly', () => {
    // One Q8_0 block: scale 0.5 (F16 0x3800), q = -16..15 → value 0.5·q.
    const q8 = new Uint8Array(34);
    new DataView(q8.buffer).setUint16(0, 0x3800, true);
    for (let j = 0; j < 32; j++) new DataView(q8.buffer).setInt8(2 + j, j - 16);
    // One Q4_0 block: scale 2 (0x4000), byte j = (lo j, hi 15-j) → value 2·(nibble − 8).
    const q4 = new Uint8Array(18);
    new DataView(q4.buffer).setUint16(0, 0x4000, true);
    for (let j = 0; j < 16; j++) q4[2 + j] = j | ((15 - j) << 4);
    const bf = new Uint8Array(4);
    new DataView(bf.buffer).setUint16(0, 0x3fc0, true); // 1.5
    new DataView(bf.buffer).setUint16(2, 0xc000, true); // -2
    const file = raw([
      ['q8', 8, q8],
      ['q4', 2, q4],
      ['bf', 30, bf],
    ]);
    const info = readGgufInfo(file);
    expect(Array.from(readTensorF32(file, info, 'q8'))).toEqual(
      Array.from({ length: 32 }, (_, j) => 0.5 * (j - 16)),
    );
    const v4 = readTensorF32(file, info, 'q4');
    for (let j = 0; j < 16; j++) {
      expect(v4[j]).toBe(2 * (j - 8));
      expect(v4[j + 16]).toBe(2 * (15 - j - 8));
    }
    expect(Array.from(readTensorF32(file, info, 'bf'))).toEqual([1.5, -2]);
  });
});

/** A GGUF with raw tensor bytes of the given ggml types (32 elements each, or 2 for BF16). */
function raw(tensors: [string, number, Uint8Array][]): Uint8Array {
  const enc = new TextEncoder();
  const parts: number[] = [];
  const u32 = (v: number) => parts.push(v & 255, (v >>> 8) & 255, (v >>> 16) & 255, (v >>> 24) & 255);
  const u64 = (v: number) => {
    u32(v);
    u32(0);
  };
  const str = (s: string) => {
    const b = enc.encode(s);
    u64(b.length);
    parts.push(...b);
  };
  u32(0x46554747);
  u32(3);
  u64(tensors.length);
  u64(1);
  str('general.architecture');
  u32(8);
  str('llama');
  let offset = 0;
  for (const [name, type, bytes] of tensors) {
    str(name);
    u32(1);
    u64(type === 30 ? bytes.length / 2 : 32);
    u32(type);
    u64(offset);
    offset += Math.ceil(bytes.length / 32) * 32;
  }
  while (parts.length % 32) parts.push(0);
  for (const [, , bytes] of tensors) {
    parts.push(...bytes);
    while (parts.length % 32) parts.push(0);
  }
  return Uint8Array.from(parts);
}
