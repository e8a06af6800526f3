import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openBytes, sealBytes } from '../../src/seal/container.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/index.js';
import type { TrainingFacts } from '../../src/tee/training-receipt.js';
import { TrainError } from '../../src/train/errors.js';
import { type PreparedJob, prepareJob, type RunJobOptions, runJob } from '../../src/train/job.js';
import { utf8 } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import { MemoryBroker, sealText, toyTrainer } from './fake.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let work: string;
let shm: string;
let broker: MemoryBroker;
let facts: TrainingFacts[];

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'cloister-train-'));
  shm = mkdtempSync('/dev/shm/cloister-train-');
  broker = new MemoryBroker();
  facts = [];
  await broker.addKek('data/corpus/key');
  await broker.addKek('owner/model/key');
});
afterEach(() => {
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

async function job(extra: Record<string, unknown> = {}): Promise<string> {
  const sealed = await sealText(broker, 'data/corpus/key', 'the quick brown fox', 'corpus.txt');
  writeFileSync(join(work, 'corpus.txt.sealed'), sealed);
  const manifest = {
    version: 1,
    name: 'toy',
    inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: sha(sealed) }],
    trainer: { builtin: 'mlp' },
    // Checked as the mlp trainer's before the run (the toy trainer stands in for it and reads steps).
    hyperparameters: { steps: 12, task: 'classify', label: 'y' },
    seed: 3,
    outputs: { recipients: ['kbs:///owner/model/key'] },
    checkpoints: { everySteps: 4 },
    ...extra,
  };
  const path = join(work, 'job.json');
  writeFileSync(path, JSON.stringify(manifest));
  return path;
}

function options(over: Partial<RunJobOptions> = {}): RunJobOptions {
  return {
    broker,
    tee: { kind: 'sample', attester: new InsecureSampleAttester() },
    outputDir: join(work, 'out'),
    privateDir: { parent: shm },
    log: () => {},
    builtins: { mlp: toyTrainer },
    signReceipt: async (f) => {
      facts.push(f);
      return utf8.encode(JSON.stringify({ payload: f.manifest.sha256 }));
    },
    ...over,
  };
}

const model = () => readFileSync(join(work, 'out', 'model.txt.sealed'));

describe('runJob (built-in trainer)', () => {
  it('trains, seals checkpoints in a chain and the model to the owner, and appends the receipt', async () => {
    const p = await prepareJob(await job());
    const r = await runJob(p, options());
    expect(r.status).toBe(0);
    expect(r.outputs.map((o) => o.file)).toEqual(['model.txt.sealed']);
    expect(r.outputs[0]!.recipients).toEqual(['kbs:///owner/model/key']);
    expect(r.checkpoints.map((c) => [c.number, c.step])).toEqual([
      [1, 4],
      [2, 8],
    ]);
    expect(r.checkpoints[1]!.prev).toBe(r.checkpoints[0]!.sealedSha256);
    expect(broker.heads.get(p.parsed.job)).toEqual({ number: 2, sha256: r.checkpoints[1]!.sealedSha256 });
    expect(facts[0]!.inputs[0]).toMatchObject({ name: 'corpus', kbs: 'kbs:///data/corpus/key' });
    expect(facts[0]!.trainer).toMatchObject({ kind: 'builtin', name: 'mlp' });
    expect(broker.receipts).toHaveLength(1);
    expect(readdirSync(shm)).toEqual([]);
    expect(readdirSync(join(work, 'checkpoints')).sort()).toEqual([
      'ckpt-000001.sealed',
      'ckpt-000002.sealed',
    ]);
  });

  it('resumes after a stop from the newest checkpoint and ends with the same model as an uninterrupted run', async () => {
    const path = await job();
    await runJob(await prepareJob(path), options());
    const straight = model();
    rmSync(join(work, 'out'), { recursive: true });
    rmSync(join(work, 'checkpoints'), { recursive: true });
    broker.heads.clear();

    const p = await prepareJob(path);
    const first = await runJob(p, options({ stopAfterSteps: 6 }));
    expect(first.status).toBe(75);
    expect(readdirSync(join(work, 'out'))).toEqual([]);
    const logs: string[] = [];
    const second = await runJob(p, options({ log: (l) => logs.push(l) }));
    expect(second.status).toBe(0);
    expect(logs.join('\n')).toMatch(/resumed from checkpoint 1 \(step 4\)/);
    expect(second.checkpoints.map((c) => c.number)).toEqual([1, 2]);
    // Sealed output bytes differ (fresh data keys); compare the plaintext through the facts' metrics.
    expect(facts[1]!.metrics).toEqual(facts[0]!.metrics);
    expect(straight.length).toBe(model().length);
  });

  it('refuses a rollback: an older checkpoint put back by the host', async () => {
    const path = await job();
    const p = await prepareJob(path);
    await runJob(p, options({ stopAfterSteps: 9 }));
    unlinkSync(join(work, 'checkpoints', 'ckpt-000002.sealed'));
    const e = await runJob(p, options()).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TrainError);
    expect((e as TrainError).code).toBe('checkpoint-rollback');
    expect((e as Error).message).toMatch(/holds checkpoint 2 .* older or another: refusing to roll back/);
  });

  it('catches up when the run ended between writing a checkpoint and telling the broker', async () => {
    const p = await prepareJob(await job());
    await runJob(p, options({ stopAfterSteps: 9 }));
    broker.heads.set(p.parsed.job, { number: 1, sha256: readHead(1) });
    const r = await runJob(p, options());
    expect(r.status).toBe(0);
  });

  it('refuses a checkpoint that does not decrypt, and one of another job', async () => {
    const path = await job();
    const p = await prepareJob(path);
    await runJob(p, options({ stopAfterSteps: 5 }));
    const f = join(work, 'checkpoints', 'ckpt-000001.sealed');
    const good = readFileSync(f);
    const bad = Buffer.from(good);
    bad[bad.length - 5]! ^= 1;
    writeFileSync(f, bad);
    broker.heads.set(p.parsed.job, { number: 1, sha256: sha(bad) });
    const e = await runJob(p, options()).catch((x: unknown) => x);
    expect((e as TrainError).code).toBe('checkpoint-decrypt');

    writeFileSync(f, good);
    const other = await prepareJob(await job({ name: 'another job' }));
    const e2 = await runJob(other, options()).catch((x: unknown) => x);
    expect((e2 as TrainError).code).toBe('checkpoint-chain');
    expect((e2 as Error).message).toMatch(/belongs to another job/);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('refuses an input whose sealed digest is not the manifest’s before any key is released', async () => {
    const path = await job();
    const p = await prepareJob(path);
    writeFileSync(
      join(work, 'corpus.txt.sealed'),
      await sealText(broker, 'data/corpus/key', 'other', 'corpus.txt'),
    );
    const e = await runJob(p, options()).catch((x: unknown) => x);
    expect((e as TrainError).code).toBe('input-digest');
    expect((e as Error).message).toMatch(
      /^inputs\[0\]: .* has sha256 [0-9a-f]{64}, not the [0-9a-f]{64} the manifest names/,
    );
    expect(broker.asked).toEqual([]);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('stops with nothing unsealed when a key is refused', async () => {
    broker.deny.add('data/corpus/key');
    const p = await prepareJob(await job());
    await expect(runJob(p, options())).rejects.toThrow(/policy denied data\/corpus\/key/);
    expect(readdirSync(shm)).toEqual([]);
    expect(readdirSync(join(work, 'out'))).toEqual([]);
  });

  it('binds the job and the trainer into init-data', async () => {
    const p: PreparedJob = await prepareJob(await job());
    const init = JSON.parse(p.initData.body);
    expect(init.data['cloister.train.manifest']).toBe(p.parsed.job);
    expect(init.data['cloister.train.trainer']).toBe(p.trainerDigest);
    expect(p.parsed.job).toBe(sha(readFileSync(join(work, 'job.json'))));
  });
});

function readHead(n: number): string {
  return sha(readFileSync(join(work, 'checkpoints', `ckpt-${String(n).padStart(6, '0')}.sealed`)));
}

describe('runJob on a full memory file system', () => {
  const tiny = join(tmpdir(), `cloister-tinyfs-${process.pid}`);
  let mounted: string | undefined;
  try {
    mkdirSync(tiny, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', tiny], { stdio: 'ignore' });
    mounted = tiny;
  } catch {
    // Not root here: the case is covered where CI runs as root.
  }
  afterAll(() => {
    if (mounted) execFileSync('umount', [mounted]);
    rmSync(tiny, { recursive: true, force: true });
  });

  it.skipIf(!mounted)(
    'stops with one clear line when the input does not fit, and leaves nothing behind',
    async () => {
      const sealed = await sealText(broker, 'data/corpus/key', 'x'.repeat(256 * 1024), 'corpus.txt');
      writeFileSync(join(work, 'corpus.txt.sealed'), sealed);
      const path = join(work, 'job.json');
      writeFileSync(
        path,
        JSON.stringify({
          version: 1,
          name: 'big',
          inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: sha(sealed) }],
          trainer: { builtin: 'mlp' },
          hyperparameters: { steps: 1, task: 'classify', label: 'y' },
          seed: 1,
          outputs: { recipients: ['kbs:///owner/model/key'] },
        }),
      );
      const e = await runJob(await prepareJob(path), options({ privateDir: { parent: mounted! } })).catch(
        (x: unknown) => x,
      );
      expect((e as TrainError).code).toBe('no-space');
      expect((e as Error).message).toMatch(/^no space left in .*; nothing was sealed$/);
      expect(readdirSync(mounted!)).toEqual([]);
      expect(readdirSync(join(work, 'out'))).toEqual([]);
    },
  );
});

describe('checkpoints a key holder makes', () => {
  it('refuses a checkpoint forged by whoever holds the recipient key (no MAC under the job’s key)', async () => {
    const p = await prepareJob(await job());
    await runJob(p, options({ stopAfterSteps: 5 }));
    // The model owner opens checkpoint 1 with its KEK and makes a "checkpoint 2" of its own.
    const kek = broker.keks.get('owner/model/key')!;
    const first = readFileSync(join(work, 'checkpoints', 'ckpt-000001.sealed'));
    const plain = await openBytes(first, { kind: 'kek', secret: kek });
    const n = new DataView(plain.buffer, plain.byteOffset).getUint32(0);
    const meta = JSON.parse(utf8.decode(plain.subarray(4, 4 + n)));
    const forged = {
      ...meta,
      number: 2,
      step: 8,
      prev: sha(first),
      history: [{ number: 1, step: 4, sealedSha256: sha(first), prev: null }],
    };
    const m = canonicalizeBytes(forged);
    const state = new Uint8Array(new Float64Array([8, 0.5]).buffer);
    const body = new Uint8Array(4 + m.length + state.length);
    new DataView(body.buffer).setUint32(0, m.length);
    body.set(m, 4);
    body.set(state, 4 + m.length);
    const sealed = await sealBytes(body, {
      recipients: [{ type: 'kbs', uri: 'kbs:///owner/model/key', kek }],
    });
    writeFileSync(join(work, 'checkpoints', 'ckpt-000002.sealed'), sealed);
    const e = await runJob(p, options()).catch((x: unknown) => x);
    expect((e as TrainError).code).toBe('checkpoint-chain');
    expect((e as Error).message).toMatch(/was not made by a run of this job/);
  });
});

describe('what the job seals, and to whom', () => {
  async function withModel(extra: Record<string, unknown> = {}) {
    const model = await sealText(broker, 'owner/model/key', 'a model', 'start.bin');
    writeFileSync(join(work, 'start.sealed'), model);
    const path = await job({
      model: { path: 'start.sealed', sha256: sha(model) },
      outputs: undefined,
      ...extra,
    });
    return { path, model };
  }

  it('seals a starting model’s result to its owner only: another recipient beside it is refused', async () => {
    const { path } = await withModel({
      outputs: { recipients: ['kbs:///owner/model/key', 'kbs:///data/corpus/key'] },
    });
    await expect(prepareJob(path)).rejects.toThrow(
      /names kbs:\/\/\/data\/corpus\/key, not a key of the starting model's owner/,
    );
  });

  it('refuses a run whose model is not sealed to the recipients the job was prepared with', async () => {
    const { path, model } = await withModel();
    // The host shows a file sealed to another key while the job is prepared, then puts the model back.
    writeFileSync(join(work, 'start.sealed'), await sealText(broker, 'data/corpus/key', 'x', 'start.bin'));
    const p = await prepareJob(path);
    expect(p.recipients).toEqual(['kbs:///data/corpus/key']);
    writeFileSync(join(work, 'start.sealed'), model);
    const e = await runJob(p, options()).catch((x: unknown) => x);
    expect((e as TrainError).code).toBe('input-digest');
    expect((e as Error).message).toMatch(
      /is sealed to kbs:\/\/\/owner\/model\/key, not to kbs:\/\/\/data\/corpus\/key/,
    );
    expect(readdirSync(shm)).toEqual([]);
  });

  it('refuses a checkpoint sealed to another key than the job’s recipients', async () => {
    const p = await prepareJob(await job());
    await runJob(p, options({ stopAfterSteps: 5 }));
    const f = join(work, 'checkpoints', 'ckpt-000001.sealed');
    const plain = await openBytes(readFileSync(f), {
      kind: 'kek',
      secret: broker.keks.get('owner/model/key')!,
    });
    const other = await sealBytes(plain, {
      recipients: [{ type: 'kbs', uri: 'kbs:///data/corpus/key', kek: broker.keks.get('data/corpus/key')! }],
    });
    writeFileSync(f, other);
    broker.heads.set(p.parsed.job, { number: 1, sha256: sha(other) });
    const e = await runJob(p, options()).catch((x: unknown) => x);
    expect((e as TrainError).code).toBe('checkpoint-chain');
    expect((e as Error).message).toMatch(
      /is sealed to kbs:\/\/\/data\/corpus\/key, not to the job's recipients/,
    );
  });

  it('leaves no sealed output or receipt when the broker refuses the receipt', async () => {
    broker.refuseReceipts = true;
    const e = await runJob(await prepareJob(await job()), options()).catch((x: unknown) => x);
    expect((e as Error).message).toMatch(/receipt-exists/);
    expect(readdirSync(join(work, 'out'))).toEqual([]);
  });
});
