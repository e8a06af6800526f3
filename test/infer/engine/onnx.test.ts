/**
 * The ONNX embedding engine on tiny generated bundles. Exercised through the built output (dist/)
 * because its sessions run on worker threads, which load compiled files; `npm test` builds first.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type * as OnnxEngine from '../../../src/infer/engine/onnx.js';
import { type EmbeddingEngine, EngineError } from '../../../src/infer/engine/types.js';
import { writeTar } from '../../../src/infer/models/tar.js';
import { type TinyOnnxEmbeddingOptions, tinyOnnxEmbeddingFiles } from '../../../src/infer/testing/onnx.js';

const dist = (await import(
  new URL('../../../dist/infer/engine/onnx.js', import.meta.url).href
)) as typeof OnnxEngine;

const enc = new TextEncoder();
const signal = new AbortController().signal;
const engines: EmbeddingEngine[] = [];

function bundleOf(files: Map<string, Uint8Array>): Uint8Array {
  return writeTar(files);
}

async function load(
  bundle: Uint8Array,
  options: Partial<OnnxEngine.OnnxEngineOptions> = {},
): Promise<EmbeddingEngine> {
  const engine = await dist.loadOnnxEngine({ bundle, threads: 1, ...options });
  engines.push(engine);
  return engine;
}

function tiny(options: TinyOnnxEmbeddingOptions = {}): Map<string, Uint8Array> {
  return tinyOnnxEmbeddingFiles({ contextLength: 64, ...options });
}

/** The rejection of `p`, which must be an EngineError. */
async function refusal(p: Promise<unknown>): Promise<EngineError> {
  const e = await p.then(
    () => {
      throw new Error('expected a refusal');
    },
    (err: unknown) => err,
  );
  // dist/ has its own copy of the class, so match by name rather than instanceof.
  expect((e as Error).name).toBe(EngineError.name);
  return e as EngineError;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

const LONG = 'the quick brown fox jumps over the lazy dog while the cat sleeps in the warm red sun';
const TEXTS = ['a', 'hello world', LONG, 'Sealed models, attested TEEs.', 'a'];

afterAll(async () => {
  await Promise.all(engines.map((e) => e.close()));
});

describe('loadOnnxEngine on a tiny BERT-like bundle', () => {
  let engine: EmbeddingEngine;
  beforeAll(async () => {
    engine = await load(bundleOf(tiny()));
  });

  it('describes the model', () => {
    expect(engine.kind).toBe('embedding');
    expect(engine.dimensions).toBe(32);
    expect(engine.contextLength).toBe(64);
    expect(engine.parallel).toBe(1);
  });

  it('returns one unit vector per input, in input order, counting special tokens', async () => {
    const { vectors, promptTokens } = await engine.embed(TEXTS, signal);
    expect(vectors).toHaveLength(TEXTS.length);
    for (const v of vectors) {
      expect(v).toBeInstanceOf(Float32Array);
      expect(v).toHaveLength(32);
      expect(Math.sqrt(dot(v, v))).toBeCloseTo(1, 5);
    }
    // [CLS] a [SEP] = 3, [CLS] hello world [SEP] = 4, ...
    const single = await Promise.all(TEXTS.map((t) => engine.embed([t], signal)));
    expect(promptTokens).toBe(single.reduce((n, r) => n + r.promptTokens, 0));
    expect(single[0]!.promptTokens).toBe(3);
    expect(single[1]!.promptTokens).toBe(4);
    for (const i of TEXTS.keys()) expect(maxDiff(vectors[i]!, single[i]!.vectors[0]!)).toBeLessThan(1e-5);
  });

  it('gives identical text identical vectors and different text different ones', async () => {
    const { vectors } = await engine.embed(TEXTS, signal);
    expect(vectors[0]).toEqual(vectors[4]);
    for (let i = 0; i < 4; i++) {
      for (let j = i + 1; j < 4; j++) expect(dot(vectors[i]!, vectors[j]!)).toBeLessThan(0.999);
    }
    const again = await engine.embed(TEXTS, signal);
    expect(again.vectors).toEqual(vectors);
  });

  it('does not let padding change a vector', async () => {
    const alone = (await engine.embed(['a'], signal)).vectors[0]!;
    const padded = (await engine.embed([LONG, 'a'], signal)).vectors[1]!;
    expect(maxDiff(alone, padded)).toBeLessThan(1e-5);
    expect(maxDiff(alone, (await engine.embed([LONG], signal)).vectors[0]!)).toBeGreaterThan(0.1);
  });

  it('gives the same vectors however the inputs are batched', async () => {
    const small = await load(bundleOf(tiny()), { batchSize: 2 });
    const inputs = [...TEXTS, 'one', 'two three', LONG.slice(0, 20)];
    const a = await engine.embed(inputs, signal);
    const b = await small.embed(inputs, signal);
    for (const i of inputs.keys()) expect(maxDiff(a.vectors[i]!, b.vectors[i]!)).toBeLessThan(1e-5);
    expect(b.promptTokens).toBe(a.promptTokens);
  });

  it('is deterministic across loads and differs for another seed', async () => {
    const twin = await load(bundleOf(tiny()));
    const other = await load(bundleOf(tiny({ seed: 2 })));
    const mine = (await engine.embed(['hello world'], signal)).vectors[0]!;
    expect((await twin.embed(['hello world'], signal)).vectors[0]).toEqual(mine);
    expect(dot((await other.embed(['hello world'], signal)).vectors[0]!, mine)).toBeLessThan(0.999);
  });

  it('refuses empty input', async () => {
    expect(await refusal(engine.embed([], signal))).toMatchObject({ code: 'bad-request' });
    expect(await refusal(engine.embed([''], signal))).toMatchObject({ code: 'bad-request' });
    const second = await refusal(engine.embed(['ok', ''], signal));
    expect(second.message).toMatch(/input\[1\] is an empty string/);
    // The server validates JSON types, but an engine must not trust that.
    const notString = await refusal(engine.embed(['ok', 3 as unknown as string], signal));
    expect(notString).toMatchObject({
      code: 'bad-request',
      message: expect.stringMatching(/input\[1\] is not a string/),
    });
  });

  it('takes exactly contextLength tokens and refuses one more', async () => {
    // n words of "a" are n + 2 tokens with [CLS] and [SEP].
    const fits = Array(62).fill('a').join(' ');
    expect((await engine.embed([fits], signal)).promptTokens).toBe(64);
    const e = await refusal(engine.embed(['fine', `${fits} a`], signal));
    expect(e).toMatchObject({ code: 'prompt-too-long' });
    expect(e.message).toBe('input[1] is 65 tokens; this model takes at most 64');
  });

  it('never reaches for the network', async () => {
    const fetchSpy = vi.spyOn(globalThis, 'fetch');
    try {
      const fresh = await load(bundleOf(tiny()));
      await fresh.embed(['hello'], signal);
      expect(fetchSpy).not.toHaveBeenCalled();
    } finally {
      fetchSpy.mockRestore();
    }
  });
});

describe('model variants', () => {
  it('pools exactly as a model that pools itself (sentence_embedding)', async () => {
    const ours = await load(bundleOf(tiny({ seed: 3 })));
    const theirs = await load(bundleOf(tiny({ seed: 3, output: 'sentence_embedding' })));
    const a = await ours.embed(TEXTS, signal);
    const b = await theirs.embed(TEXTS, signal);
    for (const i of TEXTS.keys()) expect(maxDiff(a.vectors[i]!, b.vectors[i]!)).toBeLessThan(1e-5);
    const alone = (await theirs.embed(['a'], signal)).vectors[0]!;
    expect(maxDiff(alone, (await theirs.embed([LONG, 'a'], signal)).vectors[1]!)).toBeLessThan(1e-5);
  });

  it('feeds only the inputs a model declares (no token_type_ids)', async () => {
    const engine = await load(bundleOf(tiny({ tokenTypeIds: false, dimensions: 8 })));
    const { vectors } = await engine.embed(['hello', 'world'], signal);
    expect(engine.dimensions).toBe(8);
    expect(Math.sqrt(dot(vectors[0]!, vectors[0]!))).toBeCloseTo(1, 5);
    expect(dot(vectors[0]!, vectors[1]!)).toBeLessThan(0.999);
  });

  it('applies CLS pooling from 1_Pooling/config.json', async () => {
    const files = tiny();
    files.set(
      '1_Pooling/config.json',
      enc.encode('{"word_embedding_dimension": 32, "pooling_mode_cls_token": true}'),
    );
    const engine = await load(bundleOf(files));
    // Tokens do not interact in this model, so the [CLS] position is the same for every text.
    const { vectors } = await engine.embed(['hello', LONG], signal);
    expect(vectors[0]).toEqual(vectors[1]);
  });

  it('reads model.onnx at the top, and a bundle wrapped in one directory', async () => {
    const files = tiny();
    files.set('model.onnx', files.get('onnx/model.onnx')!);
    files.delete('onnx/model.onnx');
    const top = await load(bundleOf(files));
    const wrapped = await load(bundleOf(new Map([...tiny()].map(([p, b]) => [`tiny-model/${p}`, b]))));
    const expected = (await top.embed(['hello'], signal)).vectors[0];
    expect((await wrapped.embed(['hello'], signal)).vectors[0]).toEqual(expected);
  });

  it('caps contextLength by maxInputTokens and sentence_bert_config.json', async () => {
    expect((await load(bundleOf(tiny()), { maxInputTokens: 10 })).contextLength).toBe(10);
    expect((await load(bundleOf(tiny()), { maxInputTokens: 1000 })).contextLength).toBe(64);
    const tight = await load(bundleOf(tiny()), { maxInputTokens: 2 });
    expect(await refusal(tight.embed(['a'], signal))).toMatchObject({ code: 'prompt-too-long' });
    const files = tiny();
    files.set('sentence_bert_config.json', enc.encode('{"max_seq_length": 20, "do_lower_case": false}'));
    const capped = await load(bundleOf(files));
    expect(capped.contextLength).toBe(20);
    expect(await refusal(capped.embed([Array(19).fill('a').join(' ')], signal))).toMatchObject({
      code: 'prompt-too-long',
    });
  });
});

describe('bad bundles', () => {
  async function badModel(bundle: Uint8Array): Promise<string> {
    const e = await refusal(dist.loadOnnxEngine({ bundle, threads: 1 }));
    expect(e.code).toBe('bad-model');
    return e.message;
  }

  it('refuses what is not a tar archive, or a damaged one', async () => {
    expect(await badModel(enc.encode('{"not": "a tar"}'))).toMatch(
      /not a readable tar archive: not a tar archive/,
    );
    expect(await badModel(new Uint8Array(4096).fill(7))).toMatch(/not a readable tar archive/);
    const whole = bundleOf(tiny());
    expect(await badModel(whole.subarray(0, whole.length - 5000))).toMatch(/truncated/);
  });

  it('refuses a bundle without model.onnx or tokenizer.json', async () => {
    const noModel = tiny();
    noModel.delete('onnx/model.onnx');
    expect(await badModel(bundleOf(noModel))).toMatch(
      /no model\.onnx or onnx\/model\.onnx \(it has .*tokenizer\.json/,
    );
    const noTokenizer = tiny();
    noTokenizer.delete('tokenizer.json');
    expect(await badModel(bundleOf(noTokenizer))).toMatch(/no tokenizer\.json/);
    expect(await badModel(bundleOf(new Map()))).toMatch(/it has no files/);
  });

  it('refuses a corrupt model.onnx', async () => {
    for (const corrupt of [
      enc.encode('definitely not protobuf'),
      tiny().get('onnx/model.onnx')!.subarray(0, 5000),
      new Uint8Array(0),
    ]) {
      const files = tiny();
      files.set('onnx/model.onnx', corrupt);
      expect(await badModel(bundleOf(files))).toMatch(/ONNX Runtime cannot load model\.onnx/);
    }
  });

  it('refuses a tokenizer.json that is not JSON or not a tokenizer', async () => {
    const broken = tiny();
    broken.set('tokenizer.json', enc.encode('{"model": '));
    expect(await badModel(bundleOf(broken))).toMatch(/tokenizer\.json in the model bundle is not valid JSON/);
    const wrong = tiny();
    wrong.set('tokenizer.json', enc.encode('{"model": {"type": "NoSuchModel"}}'));
    expect(await badModel(bundleOf(wrong))).toMatch(/tokenizer\.json cannot be loaded/);
  });

  it('refuses a pooling mode it cannot apply', async () => {
    const files = tiny();
    files.set('1_Pooling/config.json', enc.encode('{"pooling_mode_max_tokens": true}'));
    expect(await badModel(bundleOf(files))).toMatch(/max_tokens pooling; only mean and CLS/);
  });

  it('refuses nonsense options', async () => {
    await expect(dist.loadOnnxEngine({ bundle: bundleOf(tiny()), parallel: 0 })).rejects.toThrow(RangeError);
    await expect(dist.loadOnnxEngine({ bundle: bundleOf(tiny()), maxInputTokens: 0 })).rejects.toThrow(
      /maxInputTokens/,
    );
  });
});

describe('concurrency, abort and close', () => {
  const many = Array.from({ length: 40 }, (_, i) => `text number ${i} ${LONG}`);

  it('runs `parallel` calls at once and gives each its own result', async () => {
    const engine = await load(bundleOf(tiny()), { parallel: 2, batchSize: 4 });
    expect(engine.parallel).toBe(2);
    const reference = await engine.embed(many, signal);
    const results = await Promise.all(
      [0, 1, 2, 3].map((k) => engine.embed(many.slice(k * 10, k * 10 + 10), signal)),
    );
    for (const [k, r] of results.entries()) {
      for (const [i, v] of r.vectors.entries())
        expect(maxDiff(v, reference.vectors[k * 10 + i]!)).toBeLessThan(1e-5);
    }
  });

  it('stops between batches when the signal aborts, and refuses an aborted signal', async () => {
    const engine = await load(bundleOf(tiny()), { batchSize: 1 });
    const ac = new AbortController();
    const running = engine.embed(many, ac.signal);
    ac.abort();
    expect(await refusal(running)).toMatchObject({ code: 'aborted' });
    expect(await refusal(engine.embed(['x'], ac.signal))).toMatchObject({ code: 'aborted' });
    // The engine is still fine afterwards.
    expect((await engine.embed(['x'], signal)).vectors).toHaveLength(1);
  });

  it('lets a queued call abort while another one runs', async () => {
    const engine = await load(bundleOf(tiny()), { batchSize: 1 });
    const first = engine.embed(many, signal);
    const ac = new AbortController();
    const queued = engine.embed(['queued'], ac.signal);
    ac.abort();
    expect(await refusal(queued)).toMatchObject({ code: 'aborted' });
    expect((await first).vectors).toHaveLength(many.length);
  });

  it('closes after the running batch, refusing the rest and anything later', async () => {
    const engine = await dist.loadOnnxEngine({ bundle: bundleOf(tiny()), threads: 1, batchSize: 1 });
    const running = engine.embed(many, signal);
    const closing = engine.close();
    expect(await refusal(running)).toMatchObject({ code: 'engine-closed' });
    await closing;
    await engine.close();
    expect(await refusal(engine.embed(['x'], signal))).toMatchObject({ code: 'engine-closed' });
  });
});
