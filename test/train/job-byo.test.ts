import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { openBytes } from '../../src/seal/container.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/index.js';
import { serveTrainingApi } from '../../src/train/api.js';
import { TrainError } from '../../src/train/errors.js';
import { prepareJob, type RunJobOptions, runJob } from '../../src/train/job.js';
import { utf8 } from '../../src/util/bytes.js';
import { cliTimeouts } from '../cli/run.js';
import { MemoryBroker, sealText } from './fake.js';

vi.setConfig(cliTimeouts(60_000));

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const CLIENT = new URL('../../python/cloister_train.py', import.meta.url).pathname;

// A trainer in plain Python (standard library only): a running sum over the input's bytes, with a
// checkpoint every 3 steps; with hyperparameters.dieAt it kills itself (SIGKILL) right after that checkpoint.
const TRAINER = `import json, os, signal, struct
from cloister_train import TrainingClient
c = TrainingClient()
job = c.job()
data = open(job["inputs"]["corpus"], "rb").read()
steps = job["hyperparameters"]["steps"]
latest = c.load_checkpoint()
step, acc = (0, job["seed"]) if latest is None else struct.unpack(">qq", latest[2])
while step < steps:
    acc = (acc * 31 + data[step % len(data)]) % 1000003
    step += 1
    c.metrics(step, loss=acc / 1000003)
    if step % 3 == 0:
        c.save_checkpoint(struct.pack(">qq", step, acc), step)
        if latest is None and job["hyperparameters"].get("dieAt") == step:
            os.kill(os.getpid(), signal.SIGKILL)
open(os.path.join(job["outputDir"], "sum.json"), "w").write(json.dumps({"acc": acc, "steps": step}))
c.finish(acc=acc)
`;

let work: string;
let shm: string;
let broker: MemoryBroker;

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'cloister-byo-'));
  shm = mkdtempSync('/dev/shm/cloister-byo-');
  broker = new MemoryBroker();
  await broker.addKek('data/corpus/key');
  await broker.addKek('owner/model/key');
  writeFileSync(join(work, 'train.py'), TRAINER);
  copyFileSync(CLIENT, join(work, 'cloister_train.py'));
  const sealed = await sealText(broker, 'data/corpus/key', 'confidential corpus bytes', 'corpus.txt');
  writeFileSync(join(work, 'corpus.txt.sealed'), sealed);
  writeFileSync(
    join(work, 'job.json'),
    JSON.stringify({
      version: 1,
      name: 'byo',
      inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: sha(sealed) }],
      trainer: { command: ['/usr/bin/python3', 'train.py'], files: ['train.py', 'cloister_train.py'] },
      hyperparameters: { steps: 10 },
      seed: 5,
      outputs: { recipients: ['kbs:///owner/model/key'] },
    }),
  );
});
afterEach(() => {
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

function options(): RunJobOptions {
  return {
    broker,
    tee: { kind: 'sample', attester: new InsecureSampleAttester() },
    outputDir: join(work, 'out'),
    privateDir: { parent: shm },
    log: () => {},
    builtins: {},
    serveApi: (socketPath, session) => serveTrainingApi({ socketPath, session }),
    signReceipt: async (f) => utf8.encode(JSON.stringify(f)),
  };
}

async function result(): Promise<unknown> {
  const sealed = readFileSync(join(work, 'out', 'sum.json.sealed'));
  return JSON.parse(
    utf8.decode(await openBytes(sealed, { kind: 'kek', secret: broker.keks.get('owner/model/key')! })),
  );
}

describe('runJob (a command trainer through the training API)', () => {
  it('runs the trainer from the hashed copies, seals its checkpoints and outputs, and states it all', async () => {
    const p = await prepareJob(join(work, 'job.json'));
    expect(p.trainer).toMatchObject({
      kind: 'command',
      files: [
        { path: 'train.py', sha256: sha(utf8.encode(TRAINER)) },
        { path: 'cloister_train.py', sha256: sha(readFileSync(CLIENT)) },
      ],
    });
    const r = await runJob(p, options());
    expect(r.status).toBe(0);
    expect(r.checkpoints.map((c) => c.step)).toEqual([3, 6, 9]);
    expect(r.metrics.acc).toBe(((await result()) as { acc: number }).acc);
    expect(readdirSync(shm)).toEqual([]);
  });

  it('resumes after the trainer was killed (SIGKILL) and ends as an uninterrupted run', async () => {
    const p = await prepareJob(join(work, 'job.json'));
    await runJob(p, options());
    const straight = await result();
    rmSync(join(work, 'out'), { recursive: true });
    rmSync(join(work, 'checkpoints'), { recursive: true });
    broker.heads.clear();

    const m = JSON.parse(readFileSync(join(work, 'job.json'), 'utf8'));
    m.hyperparameters.dieAt = 6;
    writeFileSync(join(work, 'die.json'), JSON.stringify(m));
    const dying = await prepareJob(join(work, 'die.json'));
    const e = await runJob(dying, options()).catch((x: unknown) => x);
    expect((e as TrainError).code).toBe('trainer-failed');
    expect((e as Error).message).toMatch(
      /was ended by SIGKILL; nothing was sealed \(resume from checkpoint 2\)/,
    );
    expect(readdirSync(join(work, 'out'))).toEqual([]);
    expect(readdirSync(shm)).toEqual([]);
    const r = await runJob(dying, options());
    expect(r.status).toBe(0);
    expect(await result()).toEqual(straight);
    expect(r.checkpoints.map((c) => c.number)).toEqual([1, 2, 3]);
  });

  it('refuses a trainer file whose pinned digest differs, before anything runs', async () => {
    const m = JSON.parse(readFileSync(join(work, 'job.json'), 'utf8'));
    m.trainer.files[0] = { path: 'train.py', sha256: '0'.repeat(64) };
    writeFileSync(join(work, 'job.json'), JSON.stringify(m));
    const e = await prepareJob(join(work, 'job.json')).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TrainError);
    expect((e as TrainError).code).toBe('trainer-digest');
  });

  it('refuses to seal when the trainer exits 0 without finishing, and runs it without the host’s environment', async () => {
    writeFileSync(
      join(work, 'train.py'),
      'import json, os\nopen(os.path.join(os.environ["CLOISTER_OUTPUT_DIR"], "env.json"), "w").write(json.dumps(sorted(os.environ)))\n',
    );
    process.env.PYTHONSTARTUP = '/nonexistent';
    try {
      const e = await runJob(await prepareJob(join(work, 'job.json')), options()).catch((x: unknown) => x);
      expect((e as TrainError).code).toBe('trainer-failed');
      expect((e as Error).message).toMatch(/without calling finish/);
      expect(readdirSync(join(work, 'out'))).toEqual([]);
    } finally {
      delete process.env.PYTHONSTARTUP;
    }
  });

  it('refuses a trainer command that names files outside the job', async () => {
    for (const command of [
      ['./train.sh'],
      ['/usr/bin/python3', '/tmp/x.py'],
      ['/usr/bin/python3', '../x.py'],
    ]) {
      const m = JSON.parse(readFileSync(join(work, 'job.json'), 'utf8'));
      m.trainer.command = command;
      writeFileSync(join(work, 'job.json'), JSON.stringify(m));
      await expect(prepareJob(join(work, 'job.json'))).rejects.toThrow(
        /job manifest: trainer\.command\[[01]\]/,
      );
    }
  });

  it('refuses a command after -- that is not the manifest’s', async () => {
    await expect(prepareJob(join(work, 'job.json'), ['python3', 'evil.py'])).rejects.toThrow(
      /is not the manifest's trainer.command/,
    );
  });
});
