import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadLlamaEngine } from '../../src/infer/engine/llama.js';
import { EngineError, type GenerateParams, type TextEngine } from '../../src/infer/engine/types.js';
import { tinyLlamaGguf } from '../../src/infer/testing/gguf.js';
import { writeTinyLlamaGguf } from '../../src/infer/testing/gguf-node.js';

const dir = mkdtempSync(join(tmpdir(), 'cloister-llama-'));
const modelPath = join(dir, 'tiny.gguf');
// One thread: on a small shared machine llama.cpp's spinning worker threads slow tiny models down a lot.
const base = { gpu: false as const, threads: 1 };

function params(over: Partial<GenerateParams> = {}): GenerateParams {
  return { maxTokens: 24, temperature: 0, topP: 1, stop: [], signal: new AbortController().signal, ...over };
}

async function refusal(p: Promise<unknown>): Promise<EngineError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EngineError);
  return err as EngineError;
}

let engine: TextEngine;
let loadMs = 0;
const noop = () => {};

beforeAll(async () => {
  await writeTinyLlamaGguf(modelPath, { seed: 11, context: 256 });
  const t = performance.now();
  engine = await loadLlamaEngine({ ...base, path: modelPath, parallel: 2 });
  loadMs = performance.now() - t;
});
afterAll(async () => {
  await engine?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('loadLlamaEngine on a tiny generated model', () => {
  it('loads and generates quickly', async () => {
    const t = performance.now();
    const r = await engine.complete('the answer is', params({ maxTokens: 8 }), noop);
    const genMs = performance.now() - t;
    expect(r.completionTokens).toBe(8);
    expect(loadMs + genMs).toBeLessThan(5000);
    expect(engine.kind).toBe('text');
    expect(engine.parallel).toBe(2);
    expect(engine.contextLength).toBe(256);
  });

  it('greedy generation is deterministic and streams exactly its text', async () => {
    const chunks: string[] = [];
    const a = await engine.complete('hello world, the answer is', params(), (s) => chunks.push(s));
    const b = await engine.complete('hello world, the answer is', params(), noop);
    expect(a.text.length).toBeGreaterThan(10);
    expect(b.text).toBe(a.text);
    expect(chunks.join('')).toBe(a.text);
    expect(a.finishReason).toBe('length');
    expect(a.completionTokens).toBe(24);
    // BOS, then as node-llama-cpp tokenises a completion prompt (no space prefix on the first word,
    // which this vocabulary only has with one): "h" "e" "l" "l" "o" "▁world" "," "▁the" "▁answer" "▁is".
    expect(a.promptTokens).toBe(11);
  });

  it('maxTokens ends generation with finishReason length', async () => {
    for (const maxTokens of [1, 5]) {
      const r = await engine.complete('one two', params({ maxTokens }), noop);
      expect(r.finishReason).toBe('length');
      expect(r.completionTokens).toBe(maxTokens);
    }
  });

  it('a stop string ends generation before it, and is never streamed', async () => {
    const full = await engine.complete('water people', params({ maxTokens: 32 }), noop);
    const stop = full.text.slice(6, 9);
    const cut = full.text.indexOf(stop);
    const chunks: string[] = [];
    const r = await engine.complete('water people', params({ maxTokens: 32, stop: ['zzzz', stop] }), (s) =>
      chunks.push(s),
    );
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(full.text.slice(0, cut));
    expect(chunks.join('')).toBe(r.text);
    expect(r.completionTokens).toBeLessThan(32);
  });

  it('text that may start a stop string is not lost when maxTokens ends generation', async () => {
    const full = await engine.complete('water people', params({ maxTokens: 10 }), noop);
    const chunks: string[] = [];
    // The last three characters start this stop string, which never completes.
    const r = await engine.complete(
      'water people',
      params({ maxTokens: 10, stop: [`${full.text.slice(-3)}\u0001`] }),
      (s) => chunks.push(s),
    );
    expect(r).toMatchObject({ text: full.text, finishReason: 'length', completionTokens: 10 });
    expect(chunks.join('')).toBe(full.text);
  });

  it('an abort mid-generation stops within a token and resolves with finishReason abort', async () => {
    const ac = new AbortController();
    let chunks = 0;
    const r = await engine.complete('the answer is', params({ maxTokens: 200, signal: ac.signal }), () => {
      if (++chunks === 3) ac.abort();
    });
    expect(r.finishReason).toBe('abort');
    expect(r.completionTokens).toBeGreaterThanOrEqual(3);
    expect(r.completionTokens).toBeLessThanOrEqual(5);
  });

  it('an onText that throws stops generation, rejects with its error and frees the sequence', async () => {
    const boom = new Error('client stream broke');
    const printed = vi.spyOn(console, 'error');
    try {
      let calls = 0;
      for (const run of [
        () => engine.complete('the answer is', params({ maxTokens: 200 }), throwOnSecond),
        () => engine.chat([{ role: 'user', content: 'hi' }], params({ maxTokens: 200 }), throwOnSecond),
      ]) {
        calls = 0;
        await expect(run()).rejects.toBe(boom);
        expect(calls).toBe(2);
      }
      function throwOnSecond() {
        if (++calls === 2) throw boom;
      }
      expect(printed).not.toHaveBeenCalled();
    } finally {
      printed.mockRestore();
    }
    // Both sequences are free again: two requests run at once.
    const both = await Promise.all([
      engine.complete('a', params(), noop),
      engine.complete('b', params(), noop),
    ]);
    expect(both.map((r) => r.finishReason)).toEqual(['length', 'length']);
  });

  it('an already aborted request returns at once without generating', async () => {
    const ac = new AbortController();
    ac.abort();
    let called = false;
    const r = await engine.chat([{ role: 'user', content: 'hi' }], params({ signal: ac.signal }), () => {
      called = true;
    });
    expect(r).toMatchObject({ text: '', finishReason: 'abort', completionTokens: 0 });
    expect(r.promptTokens).toBeGreaterThan(0);
    expect(called).toBe(false);
  });

  it('runs two generations at once with parallel 2, each as it would alone', async () => {
    const alone = [
      await engine.complete('the first', params({ maxTokens: 16 }), noop),
      await engine.complete('the second one', params({ maxTokens: 16 }), noop),
    ];
    const order: number[] = [];
    const both = await Promise.all([
      engine.complete('the first', params({ maxTokens: 16 }), () => order.push(0)),
      engine.complete('the second one', params({ maxTokens: 16 }), () => order.push(1)),
    ]);
    expect(both.map((r) => r.text)).toEqual(alone.map((r) => r.text));
    // Interleaved streaming: the second started before the first finished.
    expect(order.indexOf(1)).toBeLessThan(order.lastIndexOf(0));
  });

  it('queues requests beyond parallel, and an abort while queued ends that request only', async () => {
    const ac = new AbortController();
    const runs = [
      engine.complete('a', params({ maxTokens: 12 }), noop),
      engine.complete('b', params({ maxTokens: 12 }), noop),
      engine.complete('c', params({ maxTokens: 12, signal: ac.signal }), noop),
      engine.complete('d', params({ maxTokens: 12 }), noop),
    ];
    ac.abort();
    const [a, b, c, d] = await Promise.all(runs);
    expect([a, b, d].map((r) => r.finishReason)).toEqual(['length', 'length', 'length']);
    expect(c).toMatchObject({ finishReason: 'abort', completionTokens: 0, text: '' });
  });

  it('refuses prompt + maxTokens beyond the context with prompt-too-long, and accepts an exact fit', async () => {
    const prompt = 'the answer is';
    const { promptTokens } = await engine.complete(prompt, params({ maxTokens: 1 }), noop);
    const fit = await engine.complete(prompt, params({ maxTokens: 256 - promptTokens }), noop);
    expect(fit).toMatchObject({ finishReason: 'length', completionTokens: 256 - promptTokens });
    const over = await refusal(engine.complete(prompt, params({ maxTokens: 257 - promptTokens }), noop));
    expect(over).toMatchObject({ code: 'prompt-too-long' });
    const long = await refusal(engine.complete('the '.repeat(300), params({ maxTokens: 1 }), noop));
    expect(long).toMatchObject({ code: 'prompt-too-long' });
    expect(long.message).toMatch(/304 tokens/); // BOS, "t" "h" "e", 299 × "▁the", "▁"
    const chat = await refusal(engine.chat([{ role: 'user', content: 'the '.repeat(300) }], params(), noop));
    expect(chat.code).toBe('prompt-too-long');
  });

  it('a chat that exactly fits runs to maxTokens without losing any of the conversation', async () => {
    const messages = [{ role: 'user' as const, content: 'hello' }];
    const { promptTokens } = await engine.chat(messages, params({ maxTokens: 1 }), noop);
    const fit = await engine.chat(messages, params({ maxTokens: 256 - promptTokens }), noop);
    expect(fit).toMatchObject({ finishReason: 'length', completionTokens: 256 - promptTokens });
    const over = await refusal(engine.chat(messages, params({ maxTokens: 257 - promptTokens }), noop));
    expect(over.code).toBe('prompt-too-long');
  });

  it('chat uses the model’s ChatML template', async () => {
    const messages = [
      { role: 'system' as const, content: 'be brief' },
      { role: 'user' as const, content: 'hello' },
      { role: 'assistant' as const, content: 'yes' },
      { role: 'user' as const, content: 'what time is it?' },
    ];
    const chunks: string[] = [];
    const r = await engine.chat(messages, params(), (s) => chunks.push(s));
    const again = await engine.chat(messages, params(), noop);
    expect(r.text.length).toBeGreaterThan(0);
    expect(again.text).toBe(r.text);
    expect(chunks.join('')).toBe(r.text);
    expect(r.finishReason).toBe('length');
    // The template's markers are control tokens: four turns and the assistant header are all in the
    // prompt (raw text alone would be ~20 tokens), and the answer differs from a raw completion.
    expect(r.promptTokens).toBeGreaterThan(30);
    const raw = await engine.complete('what time is it?', params(), noop);
    expect(raw.text).not.toBe(r.text);
    const stop = r.text.slice(4, 7);
    const stopped = await engine.chat(messages, params({ stop: [stop] }), noop);
    expect(stopped).toMatchObject({ text: r.text.slice(0, r.text.indexOf(stop)), finishReason: 'stop' });
  });

  it('chat on a model without a chat template falls back to a general format', async () => {
    const path = join(dir, 'no-template.gguf');
    await writeTinyLlamaGguf(path, { seed: 11, context: 256, chatTemplate: null });
    const plain = await loadLlamaEngine({ ...base, path });
    try {
      const messages = [{ role: 'user' as const, content: 'hello' }];
      const r = await plain.chat(messages, params(), noop);
      expect(r.finishReason).toBe('length');
      expect(r.text.length).toBeGreaterThan(0);
      // Same weights and vocabulary, another prompt format: another prompt length.
      const chatml = await engine.chat(messages, params(), noop);
      expect(r.promptTokens).not.toBe(chatml.promptTokens);
    } finally {
      await plain.close();
    }
  });

  it('samples with temperature, reproducibly for a seed', async () => {
    const p = (seed: number) => params({ temperature: 1, topP: 0.95, seed, maxTokens: 20 });
    const a = await engine.complete('the answer is', p(5), noop);
    const b = await engine.complete('the answer is', p(5), noop);
    const c = await engine.complete('the answer is', p(6), noop);
    const greedy = await engine.complete('the answer is', params({ maxTokens: 20 }), noop);
    expect(b.text).toBe(a.text);
    expect(new Set([a.text, c.text, greedy.text]).size).toBeGreaterThan(1);
  });

  it('tokenizes any text through byte fallback', async () => {
    const text = 'héllo 🙂 世界 \u0000 tab\t';
    const r = await engine.complete(text, params({ maxTokens: 2 }), noop);
    // BOS + one token per UTF-8 byte except where ASCII pieces merge; at least the 4 + 6 multibyte bytes.
    expect(r.promptTokens).toBeGreaterThan(12);
    expect(r.completionTokens).toBe(2);
  });

  it('refuses invalid parameters with bad-request', async () => {
    const bad: Partial<GenerateParams>[] = [
      { maxTokens: 0 },
      { maxTokens: 1.5 },
      { temperature: -1 },
      { temperature: Number.NaN },
      { topP: 0 },
      { topP: 1.1 },
      { seed: -1 },
      { stop: [''] },
    ];
    for (const over of bad) {
      const err = await refusal(engine.complete('x', params(over), noop));
      expect(err).toMatchObject({ code: 'bad-request' });
    }
    const empty = await refusal(engine.chat([], params(), noop));
    expect(empty.code).toBe('bad-request');
    const role = await refusal(engine.chat([{ role: 'tool' as 'user', content: 'x' }], params(), noop));
    expect(role.message).toMatch(/unknown role/);
  });
});

describe('loadLlamaEngine refuses bad model files before llama.cpp can crash on them', () => {
  const file = (name: string, bytes: Uint8Array) => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };

  async function badModel(path: string, message: RegExp): Promise<void> {
    const err = await refusal(loadLlamaEngine({ ...base, path }));
    expect(err).toMatchObject({ code: 'bad-model' });
    expect(err.message).toMatch(message);
  }

  it('not a GGUF file', async () => {
    await badModel(file('text.gguf', new TextEncoder().encode('just some text, not a model')), /not a GGUF/);
    await badModel(file('empty.gguf', new Uint8Array()), /not a GGUF/);
  });

  it('a truncated file, cut in the header or in the tensor data', async () => {
    const bytes = tinyLlamaGguf({ seed: 2 }).bytes();
    await badModel(file('cut-header.gguf', bytes.subarray(0, 3000)), /truncated/);
    await badModel(file('cut-data.gguf', bytes.subarray(0, bytes.length - 100)), /truncated GGUF file/);
  });

  it('a missing file or a directory', async () => {
    await badModel(join(dir, 'nope.gguf'), /no such file/);
    mkdirSync(join(dir, 'adir'));
    await badModel(join(dir, 'adir'), /is a directory/);
  });

  it('a well-formed GGUF that llama.cpp refuses, with llama.cpp’s reason', async () => {
    const bytes = Buffer.from(tinyLlamaGguf({ seed: 2 }).bytes());
    const key = 'llama.block_count';
    bytes.writeUInt32LE(3, bytes.indexOf(key) + key.length + 4); // the model has 2 blocks
    await badModel(file('blocks.gguf', bytes), /missing tensor 'blk\.2/);
  });

  it('invalid options', async () => {
    const err = await refusal(loadLlamaEngine({ ...base, path: modelPath, parallel: 0 }));
    expect(err.code).toBe('bad-request');
  });
});

describe('engine lifecycle and tensor types', () => {
  it('an F16 model generates the same greedy text as its F32 twin', async () => {
    const f16 = join(dir, 'f16.gguf');
    const f32 = join(dir, 'f32.gguf');
    await writeTinyLlamaGguf(f16, { seed: 4, tensorType: 'F16' });
    await writeTinyLlamaGguf(f32, { seed: 4, tensorType: 'F32' });
    const texts: string[] = [];
    for (const path of [f16, f32]) {
      const e = await loadLlamaEngine({ ...base, path, contextSize: 128 });
      texts.push((await e.complete('the answer is', params({ maxTokens: 4 }), noop)).text);
      await e.close();
    }
    expect(texts[0]).toBe(texts[1]);
  });

  it('without a log callback llama.cpp prints nothing, even for a model it refuses', () => {
    // A separate process, so that its stdout and stderr are only this engine's. It runs the built
    // output (dist/), as `npm test` builds first.
    const blocks = Buffer.from(tinyLlamaGguf({ seed: 2 }).bytes());
    const key = 'llama.block_count';
    blocks.writeUInt32LE(3, blocks.indexOf(key) + key.length + 4);
    writeFileSync(join(dir, 'silent-bad.gguf'), blocks);
    const script = `
      const { loadLlamaEngine } = await import(${JSON.stringify(new URL('../../dist/infer/engine/llama.js', import.meta.url).href)});
      const e = await loadLlamaEngine({ path: ${JSON.stringify(modelPath)}, gpu: false, threads: 1 });
      const p = { maxTokens: 4, temperature: 0, topP: 1, stop: [], signal: new AbortController().signal };
      await e.complete('hi', p, () => {});
      await e.chat([{ role: 'user', content: 'hi' }], p, () => {});
      await e.close();
      await loadLlamaEngine({ path: ${JSON.stringify(join(dir, 'silent-bad.gguf'))}, gpu: false }).catch(() => {});`;
    // A file, not `node -e`: node-llama-cpp forks to test its binary, and a fork inherits `-e`.
    writeFileSync(join(dir, 'silent.mjs'), script);
    const r = spawnSync(process.execPath, [join(dir, 'silent.mjs')], { encoding: 'utf8' });
    expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({
      status: 0,
      stdout: '',
      stderr: '',
    });
  });

  it('a closed engine refuses requests; logs reach the log callback', async () => {
    const lines: string[] = [];
    const e = await loadLlamaEngine({
      ...base,
      path: modelPath,
      contextSize: 64,
      log: (_l, m) => lines.push(m),
    });
    expect(e.contextLength).toBeGreaterThanOrEqual(64);
    expect(lines.some((l) => l.includes('llama_model_loader'))).toBe(true);
    await e.close();
    await e.close();
    const err = await refusal(e.complete('x', params(), noop));
    expect(err).toMatchObject({ code: 'engine-closed' });
  });
});
