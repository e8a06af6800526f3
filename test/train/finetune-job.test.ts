/**
 * Fine-tuning jobs in the runner, with a stand-in trainer: the frozen base is checked, released by its
 * owner's key and unsealed into the private directory only; the adapter is sealed to the job's
 * recipients alone; a merged model also to the base's owner; the init-data and the receipt name the
 * base and what leaves. (The real LoRA trainer and two real brokers: finetune-owners.test.ts.)
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openBytes } from '../../src/seal/container.js';
import { readHeader } from '../../src/seal/node.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/index.js';
import type { TrainingFacts } from '../../src/tee/training-receipt.js';
import { prepareJob, type RunJobOptions, runJob } from '../../src/train/job.js';
import type { BuiltinTrainer, TrainerInput } from '../../src/train/trainer.js';
import { utf8 } from '../../src/util/bytes.js';
import { MemoryBroker, sealText } from './fake.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const BASE = 'vendor/base/key';
const DATA = 'company/data/key';
const ADAPTER = 'company/adapter/key';

let work: string;
let shm: string;
let broker: MemoryBroker;
let facts: TrainingFacts[];
/** What the stand-in trainer saw. */
let seen: { base?: string; merged?: boolean; baseInPrivateDir?: boolean };

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'cloister-finetune-'));
  shm = mkdtempSync('/dev/shm/cloister-finetune-');
  broker = new MemoryBroker();
  facts = [];
  seen = {};
  for (const k of [BASE, DATA, ADAPTER]) await broker.addKek(k);
});
afterEach(() => {
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

/** A stand-in LoRA trainer: one step; its "adapter" names the base's bytes, its merged model holds them. */
async function standIn(input: TrainerInput): Promise<BuiltinTrainer> {
  const base = utf8.decode(new Uint8Array(await readFile(input.base!.path)));
  seen = { base, merged: input.merged === true, baseInPrivateDir: input.base!.path.startsWith(shm) };
  let done = 0;
  return {
    name: 'lora',
    totalSteps: 1,
    get completedSteps() {
      return done;
    },
    async step() {
      done = 1;
      return { step: 1, loss: 0.5, examples: 1 };
    },
    async evaluate() {
      return {};
    },
    saveState: () => new Uint8Array(1),
    loadState() {},
    async exportModel() {
      return [
        { name: 'adapter.gguf', bytes: utf8.encode(`adapter over ${sha(utf8.encode(base))}`) },
        ...(input.merged
          ? [{ name: 'model-merged.gguf', bytes: utf8.encode(`${base}+adapter`), withBase: true }]
          : []),
      ];
    },
    dispose() {},
  };
}

async function job(extra: Record<string, unknown> = {}) {
  const data = await sealText(broker, DATA, '{"prompt":"hi","completion":"hello"}\n', 'data.jsonl');
  const base = await sealText(broker, BASE, 'the vendor base weights', 'base.gguf');
  writeFileSync(join(work, 'data.jsonl.sealed'), data);
  writeFileSync(join(work, 'base.gguf.sealed'), base);
  const path = join(work, 'job.json');
  writeFileSync(
    path,
    JSON.stringify({
      version: 1,
      name: 'tune',
      inputs: [{ name: 'data', path: 'data.jsonl.sealed', sha256: sha(data) }],
      base: { path: 'base.gguf.sealed', sha256: sha(base) },
      trainer: { builtin: 'lora' },
      hyperparameters: { steps: 1 },
      seed: 1,
      outputs: { recipients: [`kbs:///${ADAPTER}`] },
      ...extra,
    }),
  );
  return { path, base };
}

function options(): RunJobOptions {
  return {
    broker,
    tee: { kind: 'sample', attester: new InsecureSampleAttester() },
    outputDir: join(work, 'out'),
    privateDir: { parent: shm },
    log: () => {},
    builtins: { lora: standIn },
    signReceipt: async (f) => {
      facts.push(f);
      return utf8.encode('{}');
    },
  };
}

const recipientsOf = async (file: string) =>
  (await readHeader(join(work, 'out', file))).header.recipients.map((r) => r.keyId);

describe('fine-tuning jobs', () => {
  it('unseal the base into the private directory only and seal the adapter to the company alone', async () => {
    const { path, base } = await job();
    const p = await prepareJob(path);
    const init = JSON.parse(p.initData.body).data;
    expect(init['cloister.train.base']).toBe(sha(base));
    expect(init['cloister.train.outputs']).toBe('adapter');
    const r = await runJob(p, options());
    expect(r.status).toBe(0);
    expect(seen).toEqual({ base: 'the vendor base weights', merged: false, baseInPrivateDir: true });
    expect(broker.asked).toContain(BASE);
    expect(readdirSync(join(work, 'out')).sort()).toEqual(['adapter.gguf.sealed', 'training-receipt.json']);
    expect(await recipientsOf('adapter.gguf.sealed')).toEqual([`kbs:///${ADAPTER}`]);
    const f = facts[0]!;
    expect(f.base).toEqual({
      name: 'base',
      sealedSha256: sha(base),
      kbs: `kbs:///${BASE}`,
      outputs: 'adapter',
    });
    expect(f.outputs.map((o) => o.recipients)).toEqual([[`kbs:///${ADAPTER}`]]);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('seal a merged model to the company and the base’s owner, and say so in the init-data', async () => {
    const { path } = await job({ outputs: { recipients: [`kbs:///${ADAPTER}`], merged: true } });
    const p = await prepareJob(path);
    expect(JSON.parse(p.initData.body).data['cloister.train.outputs']).toBe('adapter,merged');
    await runJob(p, options());
    expect(await recipientsOf('model-merged.gguf.sealed')).toEqual([`kbs:///${ADAPTER}`, `kbs:///${BASE}`]);
    expect(await recipientsOf('adapter.gguf.sealed')).toEqual([`kbs:///${ADAPTER}`]);
    const merged = readFileSync(join(work, 'out', 'model-merged.gguf.sealed'));
    expect(utf8.decode(await openBytes(merged, { kind: 'kek', secret: broker.keks.get(BASE)! }))).toBe(
      'the vendor base weights+adapter',
    );
    expect(facts[0]!.base!.outputs).toBe('adapter,merged');
  });

  it('refuse a trainer that exports the base without outputs.merged: nothing is sealed', async () => {
    const { path } = await job();
    const o = options();
    o.builtins = {
      lora: async (input) => {
        const t = await standIn({ ...input, merged: true });
        return t;
      },
    };
    await expect(runJob(await prepareJob(path), o)).rejects.toThrow(
      /exported model-merged\.gguf, which holds the base, without outputs\.merged/,
    );
    expect(readdirSync(join(work, 'out'))).toEqual([]);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('stop before anything is unsealed when the base’s owner refuses its key', async () => {
    const { path } = await job();
    broker.deny.add(BASE);
    await expect(runJob(await prepareJob(path), options())).rejects.toThrow(
      /policy denied vendor\/base\/key/,
    );
    expect(seen).toEqual({});
    expect(readdirSync(shm)).toEqual([]);
  });

  it('refuse a base whose sealed digest is not the manifest’s before any key is asked for', async () => {
    const { path } = await job();
    writeFileSync(join(work, 'base.gguf.sealed'), await sealText(broker, BASE, 'another base', 'base.gguf'));
    await expect(runJob(await prepareJob(path), options())).rejects.toThrow(/^base: .* has sha256 /);
    expect(broker.asked).toEqual([]);
  });

  it('refuse to seal the adapter or checkpoints to a key of the base’s owner', async () => {
    const { path } = await job({ outputs: { recipients: [`kbs:///${ADAPTER}`, `kbs:///${BASE}`] } });
    await expect(prepareJob(path)).rejects.toThrow(
      `job manifest: outputs.recipients names kbs:///${BASE}, a key of the base model's owner`,
    );
  });

  it('give a command trainer the base path and announce its outputs as "files"', async () => {
    const { path } = await job({ trainer: { command: ['python3', 'finetune.py'], files: [] } });
    const p = await prepareJob(path).catch((e: Error) => e);
    // python3 may be absent from the image's folders here; what matters is the announcement.
    if (p instanceof Error) expect(p.message).toMatch(/python3/);
    else expect(JSON.parse(p.initData.body).data['cloister.train.outputs']).toBe('files');
  });
});
