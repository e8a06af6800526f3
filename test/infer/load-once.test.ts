/**
 * A model load reads the sealed header once and unwraps the data key once, however many steps use
 * them (the key request, the format peek, the unsealing, the id). Counted by wrapping the parser and
 * the unwrapper of the built modules (dist/, as load.test.ts: unsealing and hashing run on workers).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type * as Load from '../../src/infer/load.js';
import type * as Gguf from '../../src/infer/testing/gguf-node.js';
import type * as Format from '../../src/seal/format.js';
import type * as Keys from '../../src/seal/keys.js';
import type * as NodeSeal from '../../src/seal/node.js';
import { ScriptedTextEngine } from './fake-engines.js';

const calls = vi.hoisted(() => ({ parseHeader: 0, unwrapDataKey: 0 }));
vi.mock('../../dist/seal/format.js', async (original) => {
  const m = await original<typeof Format>();
  return {
    ...m,
    parseHeader: (raw: Uint8Array) => {
      calls.parseHeader++;
      return m.parseHeader(raw);
    },
  };
});
vi.mock('../../dist/seal/keys.js', async (original) => {
  const m = await original<typeof Keys>();
  return {
    ...m,
    unwrapDataKey: (...a: Parameters<typeof m.unwrapDataKey>) => {
      calls.unwrapDataKey++;
      return m.unwrapDataKey(...a);
    },
  };
});

const dist = (p: string) => import(new URL(`../../dist/${p}`, import.meta.url).href);
const { loadSealedModel } = (await dist('infer/load.js')) as typeof Load;
const { writeTinyLlamaGguf } = (await dist('infer/testing/gguf-node.js')) as typeof Gguf;
const { generateKek } = (await dist('seal/keys.js')) as typeof Keys;
const { sealFile } = (await dist('seal/node.js')) as typeof NodeSeal;

describe('loadSealedModel', () => {
  it('parses the sealed header once and unwraps the data key once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cloister-load-once-'));
    const kek = generateKek('kbs:///acme/models/kek');
    await writeTinyLlamaGguf(join(dir, 'm.gguf'), { seed: 1 });
    await sealFile(join(dir, 'm.gguf'), join(dir, 'm.sealed'), {
      recipients: [{ type: 'kbs', uri: kek.uri!, kek: kek.secret }],
    });
    calls.parseHeader = 0;
    calls.unwrapDataKey = 0;
    let keyRequests = 0;
    const model = await loadSealedModel({
      file: join(dir, 'm.sealed'),
      key: async () => {
        keyRequests++;
        return kek;
      },
      dir: mkdtempSync(join(dir, 'private-')),
      loaders: {
        gguf: async () => new ScriptedTextEngine(),
        onnxBundle: async () => {
          throw new Error('not used');
        },
      },
      log: () => {},
    });
    expect(model).toMatchObject({ id: 'm', format: 'gguf' });
    expect(calls).toEqual({ parseHeader: 1, unwrapDataKey: 1 });
    expect(keyRequests).toBe(1);
  });
});
