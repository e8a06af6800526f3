/**
 * A sealed base and a sealed LoRA adapter served end to end (real llama.cpp, real OHTTP client): the
 * adapter changes greedy output (a zero-B adapter does not), the attested identity and the receipts
 * name its sealed digest and scale, and a client policy that pins adapters accepts or refuses.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as Client from '../../src/client/index.js';
import type * as App from '../../src/infer/app.js';
import type { ResponseReceipt } from '../../src/wire/index.js';
import { adapterFor, KEK, sealBytes, tinyBase, wire } from './lora-fixtures.js';

const dist = (p: string) => import(new URL(`../../dist/${p}`, import.meta.url).href);
const { startInference } = (await dist('infer/app.js')) as typeof App;
const { confidentialFetch, parseClientPolicy } = (await dist('client/index.js')) as typeof Client;
const { offlineSource } = await dist('attest/collateral/index.js');
const { InsecureSampleAttester } = await dist('tee/evidence/sample.js');

const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-serve-'));
const parent = mkdtempSync(join(dir, 'shm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base = tinyBase();
let baseSealed: { file: string; digest: string };
let adapterSealed: { file: string; digest: string };
let zeroSealed: { file: string; digest: string };

beforeAll(async () => {
  baseSealed = await sealBytes(dir, 'base.gguf', base.bytes);
  adapterSealed = await sealBytes(dir, 'adapter.gguf', wire.writeLoraAdapter(adapterFor(base, { seed: 3 })));
  zeroSealed = await sealBytes(dir, 'zero.gguf', wire.writeLoraAdapter(adapterFor(base, { zeroB: true })));
});

async function serve(adapters: { file: string; scale: number }[]) {
  return startInference({
    models: [baseSealed.file],
    ...(adapters.length ? { adapters } : {}),
    tee: { cpu: new InsecureSampleAttester() },
    keys: { local: KEK },
    privateDir: { parent, allowDisk: true },
    // One thread: llama.cpp's spinning workers slow a tiny model down on a small shared machine.
    engines: { gpu: false, parallel: 1, threads: 1 },
    maxQueued: 4,
    allowPlaintext: false,
    host: '127.0.0.1',
    port: 0,
    log: () => {},
  });
}

const SAMPLE = { tees: ['sample'], minStatus: 'warning' };

async function ask(url: string, policy: object, receipts?: ResponseReceipt[]): Promise<string> {
  const f = confidentialFetch({
    url,
    policy: parseClientPolicy({ ...SAMPLE, ...policy }),
    collateral: offlineSource,
    refusals: 'throw',
    ...(receipts ? { onReceipt: (r: ResponseReceipt) => receipts.push(r) } : {}),
  });
  const res = await f(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'base',
      messages: [{ role: 'user', content: 'hello world' }],
      max_tokens: 16,
      temperature: 0,
    }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
}

describe('serving a base with a LoRA adapter', { timeout: 120_000 }, () => {
  let plain: string;
  beforeAll(async () => {
    const s = await serve([]);
    try {
      expect(s.attestation.identity.models[0]).not.toHaveProperty('adapters');
      plain = await ask(s.url, {});
    } finally {
      await s.close();
    }
  }, 120_000);

  it('changes the answer, attests the adapter, names it in receipts; a pinned client is served', async () => {
    const s = await serve([{ file: adapterSealed.file, scale: 1 }]);
    try {
      const model = s.attestation.identity.models[0]!;
      expect(model.digest).toBe(baseSealed.digest);
      expect(model.adapters).toEqual([{ digest: adapterSealed.digest, scale: 1 }]);
      // The adapter's plaintext went once llama.cpp held it; only the mapped base remains.
      expect(readdirSync(join(parent, readdirSync(parent)[0]!))).toHaveLength(1);
      const receipts: ResponseReceipt[] = [];
      const tuned = await ask(
        s.url,
        { models: [baseSealed.digest], adapters: [adapterSealed.digest] },
        receipts,
      );
      expect(tuned).not.toBe(plain);
      expect(receipts[0]).toMatchObject({
        modelDigest: baseSealed.digest,
        adapters: [{ digest: adapterSealed.digest, scale: 1 }],
      });
      // Pinning the base's digest alone does not let an adapter through unnoticed.
      await expect(ask(s.url, { models: [baseSealed.digest] })).rejects.toMatchObject({ code: 'adapter' });
      // Another adapter, or none, pinned: refused.
      await expect(ask(s.url, { adapters: [zeroSealed.digest] })).rejects.toMatchObject({ code: 'adapter' });
      await expect(ask(s.url, { adapters: [] })).rejects.toMatchObject({ code: 'adapter' });
    } finally {
      await s.close();
    }
    expect(readdirSync(parent)).toEqual([]);
  });

  it('a zero-B adapter leaves greedy output exactly as the base alone; two adapters stack', async () => {
    const zero = await serve([{ file: zeroSealed.file, scale: 2 }]);
    try {
      expect(await ask(zero.url, { adapters: [`${zeroSealed.digest}@2`] })).toBe(plain);
      // The scale is pinned: the digest alone means scale 1.
      await expect(ask(zero.url, { adapters: [zeroSealed.digest] })).rejects.toMatchObject({
        code: 'adapter',
        message: expect.stringContaining('(scale 2); the policy wants exactly'),
      });
    } finally {
      await zero.close();
    }
    const both = await serve([
      { file: zeroSealed.file, scale: 1 },
      { file: adapterSealed.file, scale: 1 },
    ]);
    try {
      expect(both.attestation.identity.models[0]!.adapters).toEqual([
        { digest: zeroSealed.digest, scale: 1 },
        { digest: adapterSealed.digest, scale: 1 },
      ]);
      // Exactly these two, in any order; the tuned one's effect, as the zero one adds nothing.
      const out = await ask(both.url, { adapters: [adapterSealed.digest, zeroSealed.digest] });
      expect(out).not.toBe(plain);
      await expect(ask(both.url, { adapters: [adapterSealed.digest] })).rejects.toMatchObject({
        code: 'adapter',
      });
    } finally {
      await both.close();
    }
  });
});
