import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { readGgufFileInfo } from 'node-llama-cpp';
import { afterAll, describe, expect, it } from 'vitest';
import { readGgufInfoFromFile } from '../../src/infer/models/gguf-node.js';
import { tinyLlamaGguf } from '../../src/infer/testing/gguf.js';
import { writeTinyLlamaGguf } from '../../src/infer/testing/gguf-node.js';
import { GgufError, type GgufInfo, readGgufInfo } from '../../src/wire/gguf.js';

const dir = mkdtempSync(join(tmpdir(), 'cloister-gguf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Offset just past the UTF-8 bytes of `s`'s first occurrence (a metadata key or tensor name). */
function endOf(bytes: Uint8Array, s: string): number {
  const i = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).indexOf(s);
  if (i < 0) throw new Error(`${s} not found`);
  return i + Buffer.byteLength(s);
}

function expectGgufError(fn: () => unknown, reason: GgufError['reason'], message?: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(GgufError);
  expect((caught as GgufError).reason).toBe(reason);
  if (message) expect((caught as GgufError).message).toMatch(message);
}

function f16ToF32(h: number): number {
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  return h & 0x8000 ? -v : v;
}

function tensorData(bytes: Uint8Array, info: GgufInfo, name: string): Uint8Array {
  const t = info.tensors.find((x) => x.name === name)!;
  return bytes.subarray(info.dataOffset + t.offset, info.dataOffset + t.offset + t.byteLength);
}

describe('tinyLlamaGguf', () => {
  const model = tinyLlamaGguf({ seed: 7, layers: 2, embedding: 64, context: 256 });
  const bytes = model.bytes();

  it('writes a GGUF v3 llama model that our reader parses back', () => {
    expect(bytes.length).toBe(model.size);
    const info = readGgufInfo(bytes);
    expect(info.version).toBe(3);
    expect(info.architecture).toBe('llama');
    expect(info.contextLength).toBe(256);
    expect(info.alignment).toBe(32);
    expect(info.complete).toBe(true);
    expect(info.requiredSize).toBe(bytes.length);
    expect(info.tensorCount).toBe(3 + 9 * 2);
    expect(info.tensors.map((t) => t.name).slice(0, 4)).toEqual([
      'token_embd.weight',
      'output_norm.weight',
      'output.weight',
      'blk.0.attn_norm.weight',
    ]);
    for (const t of info.tensors) expect(t.offset % 32).toBe(0);
    const m = info.metadata;
    expect(m.get('llama.embedding_length')).toBe(64);
    expect(m.get('llama.block_count')).toBe(2);
    expect(m.get('llama.attention.head_count')).toBe(4);
    expect(m.get('llama.rope.dimension_count')).toBe(16);
    expect(m.get('tokenizer.ggml.model')).toBe('llama');
    const tokens = m.get('tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(model.shape.vocab);
    expect(tokens.slice(0, 3)).toEqual(['<unk>', '<s>', '</s>']);
    expect(tokens).toContain('<0xFF>');
    expect(tokens).toContain('▁hello');
    expect((m.get('tokenizer.ggml.scores') as number[]).length).toBe(tokens.length);
    expect((m.get('tokenizer.ggml.token_type') as number[]).length).toBe(tokens.length);
    expect(m.get('tokenizer.chat_template')).toMatch(/<\|im_start\|>/);
    expect(info.tensors.find((t) => t.name === 'blk.1.ffn_down.weight')?.dims).toEqual([128, 64]);
  });

  it("is read the same way by node-llama-cpp's own GGUF parser", async () => {
    const path = join(dir, 'tiny.gguf');
    writeFileSync(path, bytes);
    const theirs = await readGgufFileInfo(path, { readTensorInfo: true });
    expect(theirs.version).toBe(3);
    const meta = theirs.metadata as unknown as {
      general: { architecture: string };
      llama: { context_length: number; embedding_length: number; block_count: number };
      tokenizer: { ggml: { tokens: string[] } };
    };
    expect(meta.general.architecture).toBe('llama');
    expect(meta.llama.context_length).toBe(256);
    expect(meta.llama.embedding_length).toBe(64);
    expect(meta.llama.block_count).toBe(2);
    expect(meta.tokenizer.ggml.tokens.length).toBe(model.shape.vocab);
    const ours = readGgufInfo(bytes);
    expect(theirs.tensorInfo?.map((t) => [t.name, t.dimensions.map(Number), Number(t.offset)])).toEqual(
      ours.tensors.map((t) => [t.name, t.dims, t.offset]),
    );
  });

  it('is deterministic in the seed, and chunks() streams the same bytes', () => {
    expect(sha(tinyLlamaGguf({ seed: 7, layers: 2, embedding: 64, context: 256 }).bytes())).toBe(sha(bytes));
    expect(sha(tinyLlamaGguf({ seed: 8, layers: 2, embedding: 64, context: 256 }).bytes())).not.toBe(
      sha(bytes),
    );
    const parts = [...model.chunks()];
    expect(Buffer.concat(parts).equals(Buffer.from(bytes))).toBe(true);
  });

  it('has small random weights, unit norms, and zero output rows for tokens it must not emit', () => {
    const info = readGgufInfo(bytes);
    const q = tensorData(bytes, info, 'blk.0.attn_q.weight');
    const w = new Float32Array(q.slice().buffer);
    let neg = 0;
    for (const v of w) {
      expect(Math.abs(v)).toBeGreaterThanOrEqual(2 ** -8);
      expect(Math.abs(v)).toBeLessThan(2 ** -4);
      if (v < 0) neg++;
    }
    expect(neg / w.length).toBeGreaterThan(0.4);
    expect(neg / w.length).toBeLessThan(0.6);
    expect([...new Float32Array(tensorData(bytes, info, 'output_norm.weight').slice().buffer)]).toEqual(
      new Array(64).fill(1),
    );
    const out = new Float32Array(tensorData(bytes, info, 'output.weight').slice().buffer);
    const row = (i: number) => out.subarray(i * 64, (i + 1) * 64);
    const tokens = info.metadata.get('tokenizer.ggml.tokens') as string[];
    for (const silent of ['</s>', '<|im_end|>', '<0x80>', '<0x00>']) {
      expect(row(tokens.indexOf(silent)).every((v) => v === 0)).toBe(true);
    }
    for (const spoken of ['<0x0A>', '▁the', 'a'])
      expect(row(tokens.indexOf(spoken)).some((v) => v !== 0)).toBe(true);
  });

  it('F16 holds exactly the F32 model’s weights, in half the bytes', () => {
    const f16 = tinyLlamaGguf({ seed: 7, layers: 2, embedding: 64, context: 256, tensorType: 'F16' }).bytes();
    const a = readGgufInfo(bytes);
    const b = readGgufInfo(f16);
    expect(b.metadata.get('general.file_type')).toBe(1);
    expect(b.tensors.find((t) => t.name === 'output_norm.weight')?.ggmlType).toBe(0); // norms stay F32
    for (const name of ['token_embd.weight', 'blk.1.ffn_up.weight']) {
      const wide = new Float32Array(tensorData(bytes, a, name).slice().buffer);
      const half = new Uint16Array(tensorData(f16, b, name).slice().buffer);
      expect(half.length).toBe(wide.length);
      expect(b.tensors.find((t) => t.name === name)?.ggmlType).toBe(1);
      for (let i = 0; i < half.length; i++) expect(f16ToF32(half[i]!)).toBe(wide[i]);
    }
  });

  it('targetBytes picks the smallest 64-multiple embedding reaching the size', () => {
    const big = tinyLlamaGguf({ targetBytes: 5_000_000, tensorType: 'F16' });
    expect(big.size).toBeGreaterThanOrEqual(5_000_000);
    expect(big.shape.embedding % 64).toBe(0);
    expect(big.shape.heads).toBe(big.shape.embedding / 64);
    const smaller = tinyLlamaGguf({
      embedding: big.shape.embedding - 64,
      heads: big.shape.heads - 1,
      feedForward: 4 * (big.shape.embedding - 64),
      layers: big.shape.layers,
      tensorType: 'F16',
    });
    expect(smaller.size).toBeLessThan(5_000_000);
    let n = 0;
    for (const c of big.chunks()) {
      expect(c.length).toBeLessThanOrEqual(4 << 20);
      n += c.length;
    }
    expect(n).toBe(big.size);
  });

  it('chatTemplate replaces or leaves out the template', () => {
    const none = readGgufInfo(tinyLlamaGguf({ chatTemplate: null }).bytes());
    expect(none.metadata.has('tokenizer.chat_template')).toBe(false);
    const custom = readGgufInfo(tinyLlamaGguf({ chatTemplate: '{{ messages[0].content }}' }).bytes());
    expect(custom.metadata.get('tokenizer.chat_template')).toBe('{{ messages[0].content }}');
  });

  it('refuses inconsistent options', () => {
    expect(() => tinyLlamaGguf({ embedding: 60, heads: 7 })).toThrow(/multiple of heads/);
    expect(() => tinyLlamaGguf({ embedding: 64, heads: 4, kvHeads: 3 })).toThrow(/kvHeads/);
    expect(() => tinyLlamaGguf({ targetBytes: 1e6, embedding: 64 })).toThrow(/leave them out/);
    expect(() => tinyLlamaGguf({ layers: 0 })).toThrow(/positive integer/);
    expect(() => tinyLlamaGguf({ tensorType: 'Q4_0' as 'F16' })).toThrow(/F32 or F16/);
  });
});

describe('readGgufInfo refuses bad input with a reason', () => {
  const bytes = tinyLlamaGguf({ seed: 1 }).bytes();
  const info = readGgufInfo(bytes);
  const patched = (at: number, write: (d: DataView) => void) => {
    const copy = bytes.slice();
    write(new DataView(copy.buffer, at));
    return copy;
  };

  it('not GGUF', () => {
    expectGgufError(() => readGgufInfo(new Uint8Array()), 'not-gguf');
    expectGgufError(() => readGgufInfo(new TextEncoder().encode('{"not": "a model"}')), 'not-gguf', /magic/);
  });

  it('unsupported versions, big-endian files included', () => {
    expectGgufError(
      () => readGgufInfo(patched(4, (d) => d.setUint32(0, 1, true))),
      'unsupported',
      /version 1/,
    );
    expectGgufError(
      () => readGgufInfo(patched(4, (d) => d.setUint32(0, 3, false))),
      'unsupported',
      /big-endian/,
    );
  });

  it('a file cut inside the header is truncated; a prefix of a longer file needs more', () => {
    for (const cut of [6, 20, 100, 5000, info.dataOffset - 40]) {
      expectGgufError(() => readGgufInfo(bytes.subarray(0, cut)), 'truncated');
      expectGgufError(() => readGgufInfo(bytes.subarray(0, cut), bytes.length), 'need-more');
    }
  });

  it('a file cut inside the tensor data parses but is not complete', () => {
    const cut = readGgufInfo(bytes.subarray(0, bytes.length - 1));
    expect(cut.complete).toBe(false);
    expect(cut.requiredSize).toBe(bytes.length);
    expect(readGgufInfo(bytes.subarray(0, info.dataOffset)).complete).toBe(false);
  });

  it('malformed structure', () => {
    const kv = endOf(bytes, 'general.alignment');
    expectGgufError(
      () => readGgufInfo(patched(kv + 4, (d) => d.setUint32(0, 24, true))),
      'malformed',
      /power of two/,
    );
    expectGgufError(
      () => readGgufInfo(patched(kv, (d) => d.setUint32(0, 99, true))),
      'malformed',
      /value type 99/,
    );
    // The second tensor, output_norm.weight: name, u32 n_dims (1), u64 dim, u32 type, u64 offset.
    const t = endOf(bytes, 'output_norm.weight');
    expectGgufError(
      () => readGgufInfo(patched(t, (d) => d.setUint32(0, 5, true))),
      'malformed',
      /5 dimensions/,
    );
    expectGgufError(
      () => readGgufInfo(patched(t + 4, (d) => d.setBigUint64(0, 0n, true))),
      'malformed',
      /empty/,
    );
    expectGgufError(
      () => readGgufInfo(patched(t + 12, (d) => d.setUint32(0, 77, true))),
      'unsupported',
      /type 77/,
    );
    expectGgufError(
      () => readGgufInfo(patched(t + 12, (d) => d.setUint32(0, 10, true))),
      'malformed',
      /multiple of 256/,
    );
    expectGgufError(
      () => readGgufInfo(patched(t + 16, (d) => d.setBigUint64(0, 33n, true))),
      'malformed',
      /aligned/,
    );
    const rename = (from: string, to: string) => {
      const copy = bytes.slice();
      copy.set(new TextEncoder().encode(to), endOf(bytes, from) - from.length);
      return copy;
    };
    expectGgufError(
      () => readGgufInfo(rename('blk.0.attn_q.weight', 'blk.1.attn_q.weight')),
      'malformed',
      /twice/,
    );
    expectGgufError(
      () => readGgufInfo(rename('general.file_type', 'general.alignment')),
      'malformed',
      /twice/,
    );
    expectGgufError(
      () => readGgufInfo(rename('general.architecture', 'general.architecturX')),
      'malformed',
      /architecture is missing/,
    );
  });

  it('lying counts and lengths do not make it loop or allocate', () => {
    const tokens = endOf(bytes, 'tokenizer.ggml.tokens');
    expectGgufError(
      () => readGgufInfo(patched(tokens + 8, (d) => d.setBigUint64(0, 1n << 40n, true))),
      'truncated',
      /claims \d+ items/,
    );
    expectGgufError(() => readGgufInfo(patched(8, (d) => d.setBigUint64(0, 1n << 50n, true))), 'truncated');
    expectGgufError(
      () => readGgufInfo(patched(8, (d) => d.setBigUint64(0, 1n << 62n, true))),
      'malformed',
      /too large/,
    );
    const name = endOf(bytes, 'general.name') + 4; // the value's length, after the u32 value type
    expectGgufError(
      () => readGgufInfo(patched(name, (d) => d.setBigUint64(0, 1n << 33n, true))),
      'truncated',
      /claims/,
    );
  });

  it('fast-check: any corruption of the header throws GgufError or parses, nothing else', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(info.dataOffset - 1), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.nat(bytes.length),
        (edits, cut) => {
          const copy = bytes.slice(0, Math.max(cut, info.dataOffset));
          for (const [at, v] of edits) copy[at] = v;
          try {
            const parsed = readGgufInfo(copy);
            expect(parsed.complete).toBe(parsed.requiredSize <= copy.length);
          } catch (err) {
            expect(err).toBeInstanceOf(GgufError);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('gguf-node', () => {
  it('writeTinyLlamaGguf streams the model to disk', async () => {
    const path = join(dir, 'w.gguf');
    const m = await writeTinyLlamaGguf(path, { seed: 3, tensorType: 'F16' });
    expect(statSync(path).size).toBe(m.size);
    const info = await readGgufInfoFromFile(path);
    expect(info.complete).toBe(true);
    expect(info.fileSize).toBe(m.size);
  });

  it('readGgufInfoFromFile reads further for a header beyond its first 1 MiB read', async () => {
    const path = join(dir, 'long-header.gguf');
    const name = 'x'.repeat(3 << 20);
    await writeTinyLlamaGguf(path, { name });
    const info = await readGgufInfoFromFile(path);
    expect(info.metadata.get('general.name')).toBe(name);
    expect(info.dataOffset).toBeGreaterThan(3 << 20);
    expect(info.complete).toBe(true);
  });

  it('readGgufInfoFromFile reports a truncated file', async () => {
    const path = join(dir, 'cut.gguf');
    writeFileSync(path, tinyLlamaGguf().bytes().subarray(0, 1000));
    await expect(readGgufInfoFromFile(path)).rejects.toMatchObject({
      name: 'GgufError',
      reason: 'truncated',
    });
    await expect(readGgufInfoFromFile(join(dir, 'missing.gguf'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
