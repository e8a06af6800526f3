/**
 * Two owners, two policies, a real key broker: the data owner's key policy and the model owner's key
 * policy each approve the trainer (by the digest the TEE's init-data names) and the TEE on their own;
 * either one alone stops the job with the reason in that owner's log, and nothing is unsealed. With
 * both approving, the job trains, its checkpoints advance the broker's counter and its receipt is
 * verified and logged by the broker.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sealBytes } from '../../src/seal/container.js';
import type { KekKey } from '../../src/seal/keys.js';
import { InsecureSampleAttester, sampleHostData } from '../../src/tee/evidence/index.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { kbsAttester } from '../../src/tee/keys.js';
import { runTrainingJob } from '../../src/train/app.js';
import { prepareJob } from '../../src/train/job.js';
import { utf8 } from '../../src/util/bytes.js';
import { type TestBroker, testBroker } from '../kbs/helpers.js';
import { approvesTrainer, setPolicy, storeKek } from './owners-fixtures.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const CORPUS = 'data/corpus/kek';
const MODEL = 'vendor/model/kek';

let b: TestBroker;
let work: string;
let shm: string;
let keks: Record<string, KekKey>;

beforeAll(async () => {
  b = await testBroker({ devMode: true, db: 'memory:' });
  keks = {};
  for (const [tenant, path] of [
    ['data', CORPUS],
    ['vendor', MODEL],
  ] as const)
    keks[path] = await storeKek(b, tenant, path);
});
afterAll(() => b.close());
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'cloister-owners-'));
  shm = mkdtempSync('/dev/shm/cloister-owners-');
  return () => {
    rmSync(work, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  };
});

async function job() {
  const corpus = 'the quick brown fox jumps over the lazy dog. '.repeat(40);
  const sealed = await sealBytes(utf8.encode(corpus), {
    recipients: [{ type: 'kbs', uri: `kbs:///${CORPUS}`, kek: keks[CORPUS]!.secret }],
    name: 'corpus.txt',
  });
  writeFileSync(join(work, 'corpus.txt.sealed'), sealed);
  writeFileSync(
    join(work, 'job.json'),
    JSON.stringify({
      version: 1,
      name: 'owners',
      inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: sha(sealed) }],
      trainer: { builtin: 'llama' },
      hyperparameters: { steps: 6, dim: 16, layers: 1, heads: 2, seq: 16, batch: 2 },
      seed: 1,
      outputs: { recipients: [`kbs:///${MODEL}`] },
      checkpoints: { everySteps: 3 },
    }),
  );
  return prepareJob(join(work, 'job.json'));
}

async function run(p: Awaited<ReturnType<typeof job>>) {
  const attester = new InsecureSampleAttester({ hostData: await sampleHostData(p.initData) });
  const broker = new KbsClient({
    url: b.url,
    attester: kbsAttester('sample', attester),
    initData: p.initData,
  });
  return runTrainingJob(p, {
    broker,
    tee: { kind: 'sample', attester },
    outputDir: join(work, 'out'),
    privateDir: { parent: shm },
    log: () => {},
  });
}

/** The denials in the transparency log (each owner reads its own) of releases of `path`. */
async function denials(path: string): Promise<unknown[]> {
  const r = await b.call('GET', '/admin/v1/log/entries', await b.admin());
  const entries = (await r.json()).entries as { kind: string; subject: string }[];
  return entries.filter((e) => e.kind === 'denial' && e.subject === path);
}

describe('two owners, two policies', () => {
  it('the data owner alone stops the job; the reason is in its log; nothing is unsealed', async () => {
    const p = await job();
    await setPolicy(b, 'data', CORPUS, approvesTrainer(`sha256:${'0'.repeat(64)}`));
    await setPolicy(b, 'vendor', MODEL, approvesTrainer(p.trainerDigest));
    const before = (await denials(CORPUS)).length;
    await expect(run(p)).rejects.toThrow(/data\/corpus\/kek/);
    expect((await denials(CORPUS)).length).toBe(before + 1);
    expect(readdirSync(shm)).toEqual([]);
    expect(readdirSync(join(work, 'out'))).toEqual([]);
  });

  it('the model owner alone stops the job; the reason is in its log; nothing is unsealed', async () => {
    const p = await job();
    await setPolicy(b, 'data', CORPUS, approvesTrainer(p.trainerDigest));
    await setPolicy(b, 'vendor', MODEL, approvesTrainer(`sha256:${'0'.repeat(64)}`));
    const before = (await denials(MODEL)).length;
    await expect(run(p)).rejects.toThrow(/vendor\/model\/kek/);
    expect((await denials(MODEL)).length).toBe(before + 1);
    expect(readdirSync(shm)).toEqual([]);
    expect(readdirSync(join(work, 'out'))).toEqual([]);
  });

  it('with both approving, it trains, advances the broker’s counter and the broker logs its verified receipt', async () => {
    const p = await job();
    await setPolicy(b, 'data', CORPUS, approvesTrainer(p.trainerDigest));
    await setPolicy(b, 'vendor', MODEL, approvesTrainer(p.trainerDigest));
    const r = await run(p);
    expect(r.status).toBe(0);
    expect(r.checkpoints.map((c) => c.number)).toEqual([1]);
    expect(readdirSync(join(work, 'out')).sort()).toEqual(['model.gguf.sealed', 'training-receipt.json']);
    const entries = (await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json())
      .entries as {
      kind: string;
      details: Record<string, unknown>;
    }[];
    const receipt = entries.find((e) => e.kind === 'train-receipt' && e.details.job === p.parsed.job);
    expect(receipt?.details).toMatchObject({
      // Known by its Statement (the DSSE payload), whatever envelope carries it.
      sha256: sha(
        Buffer.from(
          JSON.parse(readFileSync(join(work, 'out', 'training-receipt.json'), 'utf8')).payload,
          'base64',
        ),
      ),
      tee: { kind: 'sample', insecure: true, measurement: '00'.repeat(48) },
      trainer: { kind: 'builtin', name: 'llama', digest: p.trainerDigest },
      recipients: [`kbs:///${MODEL}`],
    });
    expect(
      entries.filter((e) => e.kind === 'train-checkpoint' && e.details.job === p.parsed.job),
    ).toHaveLength(1);
    expect(readdirSync(shm)).toEqual([]);
  });
});
