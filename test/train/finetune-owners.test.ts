/**
 * Fine-tuning with two owners and two real brokers: the vendor's broker holds the base's key, the
 * company's broker the data's and the adapter's. The built-in LoRA trainer runs in the sample TEE;
 * the vendor's policy releases the base only to the approved trainer in a job whose only output is
 * an adapter (the init-data says so), the company's releases its data to the approved trainer. Each
 * owner refuses in turn; a job that would output the base merged with the adapter is refused by the
 * vendor; with both approving, the adapter is sealed to the company alone and the receipt names the
 * base, the data and the adapter.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sealBytes } from '../../src/seal/container.js';
import type { KekKey } from '../../src/seal/keys.js';
import { readHeader } from '../../src/seal/node.js';
import { InsecureSampleAttester, sampleHostData } from '../../src/tee/evidence/index.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { kbsAttester, routeResources } from '../../src/tee/keys.js';
import type { TrainingPredicate } from '../../src/tee/training-receipt.js';
import { runTrainingJob } from '../../src/train/app.js';
import { prepareJob } from '../../src/train/job.js';
import { writeLlamaGguf } from '../../src/train/llama/index.js';
import { initParams } from '../../src/train/llama/model.js';
import { utf8 } from '../../src/util/bytes.js';
import { type TestBroker, testBroker } from '../kbs/helpers.js';
import { approvesTrainer, setPolicy, storeKek } from './owners-fixtures.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const BASE = 'vendor/models/base';
const DATA = 'helpdesk/data/kek';
const ADAPTER = 'helpdesk/adapters/kek';
const SHAPE = { vocab: 356, dim: 16, layers: 1, heads: 2, kvHeads: 2, ffn: 32 };

let vendor: TestBroker;
let company: TestBroker;
let work: string;
let shm: string;
const keks: Record<string, KekKey> = {};

beforeAll(async () => {
  vendor = await testBroker({ devMode: true, db: 'memory:' });
  company = await testBroker({ devMode: true, db: 'memory:' });
  for (const [b, tenant, path] of [
    [vendor, 'vendor', BASE],
    [company, 'helpdesk', DATA],
    [company, 'helpdesk', ADAPTER],
  ] as const)
    keks[path] = await storeKek(b, tenant, path);
});
afterAll(async () => {
  await vendor.close();
  await company.close();
});
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'cloister-ft-owners-'));
  shm = mkdtempSync('/dev/shm/cloister-ft-owners-');
  return () => {
    rmSync(work, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  };
});

/** The company's: the approved trainer, its own adapter key as the only recipient, the base it chose. */
const companyPolicy = (digest: string, base: string) =>
  `${approvesTrainer(digest)} && init_data.?data["cloister.train.recipients"].orValue("") == ${JSON.stringify(JSON.stringify([`kbs:///${ADAPTER}`]))} && init_data.?data["cloister.train.base"].orValue("") == "${base}"`;
/** The vendor's promise: the approved trainer, and nothing but an adapter leaves the TEE. */
const vendorPolicy = (digest: string) =>
  `${approvesTrainer(digest)} && init_data.?data["cloister.train.outputs"].orValue("") == "adapter"`;

const seal = (bytes: Uint8Array, path: string, name: string) =>
  sealBytes(bytes, { recipients: [{ type: 'kbs', uri: `kbs:///${path}`, kek: keks[path]!.secret }], name });

async function job(outputs: Record<string, unknown> = {}) {
  const base = await seal(
    writeLlamaGguf({ shape: SHAPE, context: 128, params: initParams(SHAPE, 5), name: 'vendor-base' }),
    BASE,
    'base.gguf',
  );
  const lines = Array.from({ length: 12 }, (_, i) =>
    JSON.stringify({ prompt: `Reset password ${i}?`, completion: 'Use the portal.' }),
  );
  const data = await seal(utf8.encode(`${lines.join('\n')}\n`), DATA, 'tickets.jsonl');
  writeFileSync(join(work, 'base.gguf.sealed'), base);
  writeFileSync(join(work, 'tickets.jsonl.sealed'), data);
  writeFileSync(
    join(work, 'job.json'),
    JSON.stringify({
      version: 1,
      name: 'helpdesk-lora',
      inputs: [{ name: 'tickets', path: 'tickets.jsonl.sealed', sha256: sha(data) }],
      base: { path: 'base.gguf.sealed', sha256: sha(base) },
      trainer: { builtin: 'lora' },
      hyperparameters: { steps: 4, seq: 64, batch: 2, rank: 2, heldOut: 0.2 },
      seed: 1,
      outputs: { recipients: [`kbs:///${ADAPTER}`], ...outputs },
    }),
  );
  return { prepared: await prepareJob(join(work, 'job.json')), base, data };
}

async function run(p: Awaited<ReturnType<typeof job>>['prepared']) {
  const attester = new InsecureSampleAttester({ hostData: await sampleHostData(p.initData) });
  const client = (url: string) =>
    new KbsClient({ url, attester: kbsAttester('sample', attester), initData: p.initData });
  // The company's broker is the job's own (checkpoints, receipt); the base's key comes from the vendor's.
  const broker = routeResources(client(company.url), new Map([['vendor', client(vendor.url)]]));
  return runTrainingJob(p, {
    broker,
    tee: { kind: 'sample', attester },
    outputDir: join(work, 'out'),
    privateDir: { parent: shm },
    log: () => {},
  });
}

const nothingLeft = () => {
  expect(readdirSync(shm)).toEqual([]);
  expect(readdirSync(join(work, 'out'))).toEqual([]);
};

describe('fine-tuning, two owners and their brokers', () => {
  it('the vendor refuses another trainer: the reason names its key; nothing is unsealed', async () => {
    const { prepared, base } = await job();
    await setPolicy(vendor, 'vendor', BASE, vendorPolicy(`sha256:${'0'.repeat(64)}`));
    await setPolicy(company, 'helpdesk', DATA, companyPolicy(prepared.trainerDigest, sha(base)));
    await setPolicy(company, 'helpdesk', ADAPTER, companyPolicy(prepared.trainerDigest, sha(base)));
    await expect(run(prepared)).rejects.toThrow(/vendor\/models\/base/);
    nothingLeft();
  });

  it('the company refuses its data over another base than the one it chose; nothing is unsealed', async () => {
    const { prepared, base } = await job();
    await setPolicy(vendor, 'vendor', BASE, vendorPolicy(prepared.trainerDigest));
    await setPolicy(company, 'helpdesk', DATA, companyPolicy(prepared.trainerDigest, '0'.repeat(64)));
    await setPolicy(company, 'helpdesk', ADAPTER, companyPolicy(prepared.trainerDigest, sha(base)));
    await expect(run(prepared)).rejects.toThrow(/helpdesk\/data\/kek/);
    nothingLeft();
  });

  it('the vendor refuses a job that would output the base merged with the adapter', async () => {
    const { prepared, base } = await job({ merged: true });
    expect(JSON.parse(prepared.initData.body).data['cloister.train.outputs']).toBe('adapter,merged');
    await setPolicy(vendor, 'vendor', BASE, vendorPolicy(prepared.trainerDigest));
    await setPolicy(company, 'helpdesk', DATA, companyPolicy(prepared.trainerDigest, sha(base)));
    await setPolicy(company, 'helpdesk', ADAPTER, companyPolicy(prepared.trainerDigest, sha(base)));
    await expect(run(prepared)).rejects.toThrow(/vendor\/models\/base/);
    nothingLeft();
  });

  it('with both approving: the adapter is sealed to the company alone; the receipt names base, data and adapter', async () => {
    const { prepared, base, data } = await job();
    await setPolicy(vendor, 'vendor', BASE, vendorPolicy(prepared.trainerDigest));
    await setPolicy(company, 'helpdesk', DATA, companyPolicy(prepared.trainerDigest, sha(base)));
    await setPolicy(company, 'helpdesk', ADAPTER, companyPolicy(prepared.trainerDigest, sha(base)));
    const r = await run(prepared);
    expect(r.status).toBe(0);
    expect(readdirSync(join(work, 'out')).sort()).toEqual(['adapter.gguf.sealed', 'training-receipt.json']);
    const header = (await readHeader(join(work, 'out', 'adapter.gguf.sealed'))).header;
    expect(header.recipients.map((x) => x.keyId)).toEqual([`kbs:///${ADAPTER}`]);
    const envelope = JSON.parse(readFileSync(join(work, 'out', 'training-receipt.json'), 'utf8'));
    const p = (
      JSON.parse(Buffer.from(envelope.payload, 'base64').toString()) as { predicate: TrainingPredicate }
    ).predicate;
    expect(p.base).toEqual({
      name: 'base',
      sealedSha256: sha(base),
      kbs: `kbs:///${BASE}`,
      outputs: 'adapter',
    });
    expect(p.inputs.map((i) => i.sealedSha256)).toEqual([sha(data)]);
    expect(p.outputs.map((o) => [o.file, o.sealedSha256])).toEqual([
      ['adapter.gguf.sealed', sha(readFileSync(join(work, 'out', 'adapter.gguf.sealed')))],
    ]);
    expect(p.metrics.base_heldout_ppl).toBeGreaterThan(0);
    expect(readdirSync(shm)).toEqual([]);
  });
});
