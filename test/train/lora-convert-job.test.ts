/**
 * `cloister lora convert` as the job it runs: the manifest the CLI writes (convertManifest), the real
 * converter as the "lora-convert" built-in, a broker per owner. The vendor's base and the company's
 * PEFT adapter are unsealed only in the private directory; the GGUF adapter is sealed to the company
 * alone; the receipt names the base, the two inputs and the adapter; a refused adapter seals nothing.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { convertManifest } from '../../src/cli/lora.js';
import { openBytes, sealBytes } from '../../src/seal/container.js';
import { readHeader } from '../../src/seal/node.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/index.js';
import type { TrainingFacts } from '../../src/tee/training-receipt.js';
import { prepareJob, type RunJobOptions, runJob } from '../../src/train/job.js';
import { createLoraConverter } from '../../src/train/lora/convert.js';
import { peftToLoraAdapter } from '../../src/train/lora/peft.js';
import { utf8 } from '../../src/util/bytes.js';
import { readLoraAdapter } from '../../src/wire/index.js';
import { MemoryBroker } from './fake.js';
import { peftConfig, peftTensors, tinyBase, writeSafetensors } from './peft-fixtures.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const BASE = 'vendor/base/key';
const COMPANY = 'company/adapter/key';

let work: string;
let shm: string;
let broker: MemoryBroker;
let facts: TrainingFacts[];

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'cloister-lora-convert-job-'));
  shm = mkdtempSync('/dev/shm/cloister-lora-convert-job-');
  broker = new MemoryBroker();
  facts = [];
  for (const k of [BASE, COMPANY]) await broker.addKek(k);
});
afterEach(() => {
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

const base = tinyBase();

async function sealTo(key: string, bytes: Uint8Array, name: string): Promise<string> {
  const path = join(work, `${name}.sealed`);
  writeFileSync(
    path,
    await sealBytes(bytes, {
      recipients: [{ type: 'kbs', uri: `kbs:///${key}`, kek: broker.keks.get(key)! }],
      name,
    }),
  );
  return path;
}

async function job(config = peftConfig()) {
  const out = join(work, 'out');
  const m = await convertManifest({
    base: await sealTo(BASE, base.bytes, 'base.gguf'),
    adapter: await sealTo(COMPANY, writeSafetensors(peftTensors()), 'adapter_model.safetensors'),
    config: await sealTo(COMPANY, config, 'adapter_config.json'),
    to: [`kbs:///${COMPANY}`],
  });
  const path = join(work, 'lora-convert.json');
  writeFileSync(path, JSON.stringify(m));
  const options: RunJobOptions = {
    broker,
    tee: { kind: 'sample', attester: new InsecureSampleAttester() },
    outputDir: out,
    privateDir: { parent: shm },
    log: () => {},
    builtins: { 'lora-convert': createLoraConverter },
    signReceipt: async (f) => {
      facts.push(f);
      return utf8.encode('{}');
    },
  };
  return { path, out, options, manifest: m };
}

describe('a lora-convert job', () => {
  it('converts inside the TEE and seals the GGUF adapter to the company alone, with a receipt naming everything', async () => {
    const { path, out, options, manifest } = await job();
    const p = await prepareJob(path);
    expect(JSON.parse(p.initData.body).data['cloister.train.outputs']).toBe('adapter');
    const r = await runJob(p, options);
    expect(r.status).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['adapter.gguf.sealed', 'training-receipt.json']);
    const sealed = join(out, 'adapter.gguf.sealed');
    expect((await readHeader(sealed)).header.recipients.map((x) => x.keyId)).toEqual([`kbs:///${COMPANY}`]);
    const gguf = await openBytes(readFileSync(sealed), { kind: 'kek', secret: broker.keks.get(COMPANY)! });
    expect(readLoraAdapter(gguf)).toEqual(
      peftToLoraAdapter(writeSafetensors(peftTensors()), peftConfig(), base),
    );
    const f = facts[0]!;
    const m = manifest as { base: { sha256: string }; inputs: { sha256: string }[] };
    expect(m.base.sha256).toBe(sha(readFileSync(join(work, 'base.gguf.sealed'))));
    expect(f.base).toMatchObject({ sealedSha256: m.base.sha256, kbs: `kbs:///${BASE}`, outputs: 'adapter' });
    expect(f.inputs.map((i) => [i.name, i.sealedSha256])).toEqual([
      ['adapter', m.inputs[0]!.sha256],
      ['config', m.inputs[1]!.sha256],
    ]);
    expect(f.outputs).toHaveLength(1);
    expect(f.outputs[0]!.recipients).toEqual([`kbs:///${COMPANY}`]);
    expect(f.metrics).toMatchObject({ step: 0, lora_pairs: 10 });
    expect(f.checkpoints).toEqual([]);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('refuses a DoRA adapter in one line: nothing sealed, nothing left unsealed', async () => {
    const { path, out, options } = await job(peftConfig({ use_dora: true }));
    const e = await runJob(await prepareJob(path), options).catch((x: unknown) => x);
    expect((e as { code: string }).code).toBe('bad-adapter');
    expect((e as Error).message).toMatch(/^adapter_config.json: use_dora is true: DoRA/);
    expect(readdirSync(out)).toEqual([]);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('does not convert without the vendor’s key', async () => {
    const { path, out, options } = await job();
    broker.deny.add(BASE);
    await expect(runJob(await prepareJob(path), options)).rejects.toThrow(/policy denied vendor\/base\/key/);
    expect(readdirSync(out)).toEqual([]);
    expect(readdirSync(shm)).toEqual([]);
  });
});

describe('convertManifest', () => {
  it('refuses --to that is not a kbs:/// key and files that are not there', async () => {
    const f = join(tmpdir(), 'nonexistent-cloister-file');
    await expect(convertManifest({ base: f, adapter: f, config: f, to: ['hpke:key.pem'] })).rejects.toThrow(
      /--to hpke:key.pem: must be kbs:\/\/\/repo\/type\/tag/,
    );
    await expect(convertManifest({ base: f, adapter: f, config: f, to: [] })).rejects.toThrow(
      /--to: name at least one/,
    );
    await expect(convertManifest({ base: f, adapter: f, config: f, to: ['kbs:///a/b/c'] })).rejects.toThrow(
      /^--base .*nonexistent-cloister-file: ENOENT/,
    );
  });
});
