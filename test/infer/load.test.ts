/**
 * loadSealedModel against a host that changes the sealed file while the TEE loads it: every read goes
 * through one descriptor, so a file renamed into place is not what gets unsealed or hashed, and a
 * change to the opened file during the load (a write, its replacement) refuses the model and leaves
 * no plaintext behind. Run through dist/ because hashing and unsealing run on worker threads, which
 * load compiled files.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, renameSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type * as Load from '../../src/infer/load.js';
import type * as Gguf from '../../src/infer/testing/gguf-node.js';
import type * as Keys from '../../src/seal/keys.js';
import type * as NodeSeal from '../../src/seal/node.js';
import { ScriptedTextEngine } from './fake-engines.js';

const dist = (p: string) => import(new URL(`../../dist/${p}`, import.meta.url).href);
const { loadSealedModel } = (await dist('infer/load.js')) as typeof Load;
const { writeTinyLlamaGguf } = (await dist('infer/testing/gguf-node.js')) as typeof Gguf;
const { generateKek } = (await dist('seal/keys.js')) as typeof Keys;
const { sealFile } = (await dist('seal/node.js')) as typeof NodeSeal;

describe('loadSealedModel and a changing file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-load-'));
  const kek = generateKek('kbs:///acme/models/kek');
  const seal = async (name: string, seed: number) => {
    await writeTinyLlamaGguf(join(dir, `${name}.gguf`), { seed });
    await sealFile(join(dir, `${name}.gguf`), join(dir, `${name}.sealed`), {
      recipients: [{ type: 'kbs', uri: kek.uri!, kek: kek.secret }],
    });
    return join(dir, `${name}.sealed`);
  };
  let a: string;
  let b: string;
  beforeAll(async () => {
    a = await seal('a', 1);
    b = await seal('b', 2);
  });

  /** Loads `file`, calling `meanwhile` once its header has been read (when the key is asked for). */
  function load(file: string, meanwhile: () => void) {
    const loaded: Uint8Array[] = [];
    const privateDir = mkdtempSync(join(dir, 'private-'));
    const result = loadSealedModel({
      file,
      key: async () => {
        meanwhile();
        return kek;
      },
      dir: privateDir,
      loaders: {
        gguf: async (path) => {
          loaded.push(readFileSync(path));
          return new ScriptedTextEngine();
        },
        onnxBundle: async () => {
          throw new Error('not used');
        },
      },
      log: () => {},
    });
    return { result, loaded, privateDir };
  }

  it('an unchanged file: the digest is of the sealed bytes, the engine gets their plaintext', async () => {
    const { result, loaded } = load(a, () => {});
    const m = await result;
    expect(m.digest).toBe(`sha256:${createHash('sha256').update(readFileSync(a)).digest('hex')}`);
    expect(loaded[0]).toEqual(readFileSync(join(dir, 'a.gguf')));
  });

  it('another file renamed into place during the load refuses the model', async () => {
    const target = join(dir, 'served.sealed');
    renameSync(await seal('served', 3), target);
    const { result, loaded } = load(target, () => renameSync(b, target));
    await expect(result).rejects.toMatchObject({ code: 'changed' });
    // Whatever was unsealed came from the file that was opened, not from the one put in its place.
    expect(loaded[0]).toEqual(readFileSync(join(dir, 'served.gguf')));
  });

  it('a write to the file during the load refuses the model, and wipes the plaintext it wrote', async () => {
    const { result, loaded, privateDir } = load(a, () => utimesSync(a, new Date(), new Date()));
    await expect(result).rejects.toMatchObject({
      code: 'changed',
      message: `${a} changed while it was being loaded; not served`,
    });
    // The engine had the model, yet nothing unsealed stays behind.
    expect(loaded).toHaveLength(1);
    expect(readdirSync(privateDir)).toEqual([]);
  });
});
