/**
 * A tiny GGUF base and LoRA adapters for it (rank 8 on attn_q and attn_v of every block), sealed to
 * one key as the vendor and the company would seal them, for the serving tests.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as Gguf from '../../src/infer/testing/gguf.js';
import type * as Keys from '../../src/seal/keys.js';
import type * as NodeSeal from '../../src/seal/node.js';
import type * as Wire from '../../src/wire/index.js';

// Through dist/: unsealing and hashing run on worker threads, which load compiled files.
const dist = (p: string) => import(new URL(`../../dist/${p}`, import.meta.url).href);
export const { tinyLlamaGguf } = (await dist('infer/testing/gguf.js')) as typeof Gguf;
export const { generateKek } = (await dist('seal/keys.js')) as typeof Keys;
export const { sealFile } = (await dist('seal/node.js')) as typeof NodeSeal;
export const wire = (await dist('wire/index.js')) as typeof Wire;

/** Deterministic uniform values in [-amp, amp). */
export function randomValues(n: number, seed: number, amp: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * 2 - 1) * amp;
  }
  return out;
}

export interface BaseFixture {
  bytes: Uint8Array;
  info: Wire.GgufInfo;
  layers: number;
}

export function tinyBase(o: { seed?: number; embedding?: number; layers?: number } = {}): BaseFixture {
  const m = tinyLlamaGguf({
    seed: o.seed ?? 5,
    context: 256,
    embedding: o.embedding ?? 64,
    layers: o.layers ?? 2,
  });
  const bytes = m.bytes();
  return { bytes, info: wire.readGgufInfo(bytes), layers: m.shape.layers };
}

/** A LoRA adapter of `rank` on q and v of every block; `zeroB` makes it change nothing. */
export function adapterFor(
  base: BaseFixture,
  o: { rank?: number; seed?: number; zeroB?: boolean; amp?: number } = {},
): Wire.LoraAdapter {
  const rank = o.rank ?? 8;
  const pairs: Wire.LoraPair[] = [];
  let seed = o.seed ?? 1;
  for (let l = 0; l < base.layers; l++) {
    for (const t of ['attn_q', 'attn_v']) {
      const target = `blk.${l}.${t}.weight`;
      const info = base.info.tensors.find((x) => x.name === target)!;
      const [inputs, outputs] = info.dims as [number, number];
      pairs.push({
        target,
        inputs,
        outputs,
        rank,
        a: randomValues(rank * inputs, seed++, o.amp ?? 0.5),
        b: o.zeroB ? new Float32Array(outputs * rank) : randomValues(outputs * rank, seed++, o.amp ?? 0.5),
      });
    }
  }
  return { architecture: base.info.architecture, alpha: rank, name: 'test-adapter', pairs };
}

export const KEK = generateKek('kbs:///acme/models/kek');

/** Writes `bytes` to DIR/NAME and seals it to `kek`; returns the sealed path and its digest. */
export async function sealBytes(
  dir: string,
  name: string,
  bytes: Uint8Array,
  kek: Keys.KekKey = KEK,
): Promise<{ file: string; digest: string }> {
  const plain = join(dir, name);
  writeFileSync(plain, bytes);
  const file = `${plain}.sealed`;
  await sealFile(plain, file, { recipients: [{ type: 'kbs', uri: kek.uri!, kek: kek.secret }] });
  return { file, digest: `sha256:${createHash('sha256').update(readFileSync(file)).digest('hex')}` };
}
