/**
 * `cloister serve --lora`'s refusals, before llama.cpp sees anything: every bad adapter is one line
 * (code bad-adapter) naming the file, the engine is never asked to load, and the private directory is
 * left empty. A good adapter reaches the engine, is bound by its sealed digest, and its plaintext file
 * is gone once the engine holds it.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as App from '../../src/infer/app.js';
import type * as Load from '../../src/infer/load.js';
import { ScriptedTextEngine } from './fake-engines.js';
import { adapterFor, KEK, sealBytes, tinyBase, wire } from './lora-fixtures.js';

const dist = (p: string) => import(new URL(`../../dist/${p}`, import.meta.url).href);
const { loadSealedModel } = (await dist('infer/load.js')) as typeof Load;
const { startInference } = (await dist('infer/app.js')) as typeof App;
const { InsecureSampleAttester } = await dist('tee/evidence/sample.js');

const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-refusals-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base = tinyBase();
let baseFile: string;
beforeAll(async () => {
  baseFile = (await sealBytes(dir, 'base.gguf', base.bytes)).file;
});

function load(adapters: { file: string; scale: number }[]) {
  const privateDir = mkdtempSync(join(dir, 'private-'));
  const seen: { model: Uint8Array; adapters: { bytes: Uint8Array; scale: number }[] }[] = [];
  const result = loadSealedModel({
    file: baseFile,
    key: async () => KEK,
    dir: privateDir,
    adapters,
    loaders: {
      gguf: async (path, given = []) => {
        seen.push({
          model: new Uint8Array(readFileSync(path)),
          adapters: given.map((a) => ({ bytes: new Uint8Array(readFileSync(a.path)), scale: a.scale })),
        });
        return new ScriptedTextEngine();
      },
      onnxBundle: async () => {
        throw new Error('not used');
      },
    },
    log: () => {},
  });
  return { result, seen, privateDir };
}

/** An adapter's bytes with the first value of its first tensor replaced by NaN. */
function withNaN(bytes: Uint8Array): Uint8Array {
  const out = bytes.slice();
  const info = wire.readGgufInfo(out);
  new DataView(out.buffer).setFloat32(info.dataOffset + info.tensors[0]!.offset, Number.NaN, true);
  return out;
}

/** The tensors of a good adapter for the base, to write under other metadata. */
function adapterTensors() {
  return adapterFor(base).pairs.flatMap((p) => [
    { name: `${p.target}.lora_a`, dims: [p.inputs, p.rank], type: 'F32' as const, data: p.a },
    { name: `${p.target}.lora_b`, dims: [p.rank, p.outputs], type: 'F32' as const, data: p.b },
  ]);
}

describe('a LoRA adapter is checked against the base before the engine sees either', () => {
  it('a good adapter: the engine gets it, the identity binds its sealed digest, its plaintext is wiped', async () => {
    const bytes = wire.writeLoraAdapter(adapterFor(base));
    const sealed = await sealBytes(dir, 'good.gguf', bytes);
    const { result, seen, privateDir } = load([{ file: sealed.file, scale: 0.5 }]);
    const m = await result;
    expect(m.adapters).toEqual([{ digest: sealed.digest, scale: 0.5 }]);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.model).toEqual(base.bytes);
    expect(seen[0]!.adapters).toEqual([{ bytes, scale: 0.5 }]);
    // Only the base stays (llama.cpp maps it); the adapter's plaintext went once the engine had it.
    expect(readdirSync(privateDir)).toHaveLength(1);
  });

  const other = tinyBase({ embedding: 128, seed: 9 });
  const bad: [string, () => Uint8Array, RegExp][] = [
    [
      'another architecture',
      () => wire.writeLoraAdapter({ ...adapterFor(base), architecture: 'qwen2' }),
      /for architecture "qwen2", the base model is "llama"/,
    ],
    ['another base (shapes)', () => wire.writeLoraAdapter(adapterFor(other)), /made for another base/],
    [
      'a tensor the base lacks',
      () => {
        const a = adapterFor(base);
        a.pairs[0] = { ...a.pairs[0]!, target: 'blk.9.attn_q.weight' };
        return wire.writeLoraAdapter(a);
      },
      /adapts blk\.9\.attn_q\.weight, which the base model does not have/,
    ],
    ['a NaN weight', () => withNaN(wire.writeLoraAdapter(adapterFor(base))), /a weight that is NaN/],
    [
      'rank 0',
      () =>
        wire.writeGguf(
          [
            ['general.architecture', { type: 'string', value: 'llama' }],
            ['general.type', { type: 'string', value: 'adapter' }],
            ['adapter.type', { type: 'string', value: 'lora' }],
            ['adapter.lora.alpha', { type: 'f32', value: 8 }],
          ],
          [
            { name: 'blk.0.attn_q.weight.lora_a', dims: [64, 0], type: 'F32', data: new Float32Array(0) },
            { name: 'blk.0.attn_q.weight.lora_b', dims: [0, 64], type: 'F32', data: new Float32Array(0) },
          ],
        ),
      /rank/,
    ],
    [
      'a u32 alpha (llama.cpp would abort on it)',
      () =>
        wire.writeGguf(
          [
            ['general.architecture', { type: 'string', value: 'llama' }],
            ['general.type', { type: 'string', value: 'adapter' }],
            ['adapter.type', { type: 'string', value: 'lora' }],
            ['adapter.lora.alpha', { type: 'u32', value: 8 }],
          ],
          adapterTensors(),
        ),
      /adapter\.lora\.alpha has GGUF type uint32; llama\.cpp reads it only as float32/,
    ],
    ['a model, not an adapter', () => base.bytes, /not a LoRA adapter/],
    ['not GGUF at all', () => new TextEncoder().encode('just text, no adapter'), /not a readable GGUF file/],
  ];
  for (const [what, make, why] of bad) {
    it(`refuses ${what}: one line, the engine never called, nothing left in the private directory`, async () => {
      const sealed = await sealBytes(dir, `${what.replaceAll(/\W/g, '-')}.gguf`, make());
      const { result, seen, privateDir } = load([{ file: sealed.file, scale: 1 }]);
      const err = (await result.then(
        () => undefined,
        (e: unknown) => e,
      )) as Load.ModelLoadError;
      expect(err?.code).toBe('bad-adapter');
      expect(err.message).toMatch(why);
      expect(err.message).toContain(sealed.file);
      expect(err.message).not.toContain('\n');
      expect(seen).toEqual([]);
      expect(readdirSync(privateDir)).toEqual([]);
    });
  }

  it('refuses a scale outside [0.001, 1000] before unsealing anything', async () => {
    const good = await sealBytes(dir, 'good-scale.gguf', wire.writeLoraAdapter(adapterFor(base)));
    for (const scale of [0, 1e-300, 1e300, Number.POSITIVE_INFINITY, -1]) {
      const { result, seen, privateDir } = load([{ file: good.file, scale }]);
      await expect(result).rejects.toMatchObject({
        code: 'bad-adapter',
        message: `${good.file}: the adapter's scale must be a number from 0.001 to 1000, got ${scale}`,
      });
      expect(seen).toEqual([]);
      expect(readdirSync(privateDir)).toEqual([]);
    }
  });

  it('a second, bad adapter after a good one refuses both; nothing is left', async () => {
    const good = await sealBytes(dir, 'good2.gguf', wire.writeLoraAdapter(adapterFor(base)));
    const nan = await sealBytes(dir, 'nan2.gguf', withNaN(wire.writeLoraAdapter(adapterFor(base))));
    const { result, seen, privateDir } = load([
      { file: good.file, scale: 1 },
      { file: nan.file, scale: 1 },
    ]);
    await expect(result).rejects.toMatchObject({ code: 'bad-adapter' });
    expect(seen).toEqual([]);
    expect(readdirSync(privateDir)).toEqual([]);
  });

  it('an adapter written to while loading refuses the model, and no plaintext is left', async () => {
    const good = await sealBytes(dir, 'touched.gguf', wire.writeLoraAdapter(adapterFor(base)));
    const privateDir = mkdtempSync(join(dir, 'private-'));
    let engines = 0;
    await expect(
      loadSealedModel({
        file: baseFile,
        key: async (_header, file) => {
          if (file === good.file) utimesSync(good.file, new Date(), new Date());
          return KEK;
        },
        dir: privateDir,
        adapters: [{ file: good.file, scale: 1 }],
        loaders: {
          gguf: async () => {
            engines++;
            return new ScriptedTextEngine();
          },
          onnxBundle: async () => {
            throw new Error('not used');
          },
        },
        log: () => {},
      }),
    ).rejects.toMatchObject({
      code: 'changed',
      message: `${good.file} changed while it was being loaded; not served`,
    });
    // Found only once the engine held the model: the base's plaintext goes too.
    expect(engines).toBe(1);
    expect(readdirSync(privateDir)).toEqual([]);
  });

  it('an engine that fails after the adapters were written leaves nothing behind', async () => {
    const good = await sealBytes(dir, 'good3.gguf', wire.writeLoraAdapter(adapterFor(base)));
    const privateDir = mkdtempSync(join(dir, 'private-'));
    await expect(
      loadSealedModel({
        file: baseFile,
        key: async () => KEK,
        dir: privateDir,
        adapters: [{ file: good.file, scale: 1 }],
        loaders: {
          gguf: async () => {
            throw new Error('llama.cpp refused it');
          },
          onnxBundle: async () => {
            throw new Error('not used');
          },
        },
        log: () => {},
      }),
    ).rejects.toThrow('llama.cpp refused it');
    expect(readdirSync(privateDir)).toEqual([]);
  });

  it('startInference refuses adapters unless there is exactly one model, before anything loads', async () => {
    const good = await sealBytes(dir, 'good4.gguf', wire.writeLoraAdapter(adapterFor(base)));
    const parent = mkdtempSync(join(dir, 'parent-'));
    await expect(
      startInference({
        models: [baseFile, baseFile],
        adapters: [{ file: good.file, scale: 1 }],
        tee: { cpu: new InsecureSampleAttester() },
        keys: { local: KEK },
        privateDir: { parent, allowDisk: true },
        engines: { gpu: false, parallel: 1 },
        maxQueued: 1,
        allowPlaintext: false,
        host: '127.0.0.1',
        port: 0,
        log: () => {},
      }),
    ).rejects.toThrow(/give exactly one GGUF model with them, not 2/);
    expect(readdirSync(parent)).toEqual([]);
  });
});
