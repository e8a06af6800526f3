/**
 * A real bring-your-own trainer end to end: Debian's PyTorch (python3-torch) trains an MLP from a
 * sealed CSV through the training API (python/examples/train_csv.py), its checkpoints sealed and
 * chained, its model sealed to the owner; and the model it writes opens with the owner's key.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { openBytes, sealBytes } from '../../src/seal/container.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/index.js';
import { serveTrainingApi } from '../../src/train/api.js';
import { prepareJob, runJob } from '../../src/train/job.js';
import { utf8 } from '../../src/util/bytes.js';
import { MemoryBroker } from './fake.js';
import { PYTHON, pythonCannot } from './python.js';

vi.setConfig({ testTimeout: 300_000 });

const cannot = pythonCannot('import torch');
if (cannot && process.env.CLOISTER_REQUIRE_TORCH === '1') throw new Error(cannot);

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const PY = new URL('../../python/', import.meta.url).pathname;

function csv(): string {
  let s = 7;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31 - 0.5;
  };
  const lines = ['a,b,c,label'];
  for (let i = 0; i < 300; i++) {
    const f = [next(), next(), next()];
    lines.push(`${f.map((v) => v.toFixed(4)).join(',')},${f[0]! + f[1]! > 0 ? 'yes' : 'no'}`);
  }
  return `${lines.join('\n')}\n`;
}

describe.skipIf(cannot !== undefined)(
  `cloister train with PyTorch from a sealed CSV (${cannot ?? PYTHON})`,
  () => {
    let work: string;
    let shm: string;
    beforeEach(() => {
      work = mkdtempSync(join(tmpdir(), 'cloister-torch-job-'));
      shm = mkdtempSync('/dev/shm/cloister-torch-job-');
    });
    afterEach(() => {
      rmSync(work, { recursive: true, force: true });
      rmSync(shm, { recursive: true, force: true });
    });

    it('trains, checkpoints, seals model.pt to the owner', async () => {
      const broker = new MemoryBroker();
      await broker.addKek('data/table/key');
      await broker.addKek('owner/model/key');
      const sealed = await sealBytes(utf8.encode(csv()), {
        recipients: [{ type: 'kbs', uri: 'kbs:///data/table/key', kek: broker.keks.get('data/table/key')! }],
        name: 'table.csv',
      });
      writeFileSync(join(work, 'table.csv.sealed'), sealed);
      copyFileSync(join(PY, 'examples', 'train_csv.py'), join(work, 'train_csv.py'));
      copyFileSync(join(PY, 'cloister_train.py'), join(work, 'cloister_train.py'));
      writeFileSync(
        join(work, 'job.json'),
        JSON.stringify({
          version: 1,
          name: 'torch-mlp',
          inputs: [{ name: 'table', path: 'table.csv.sealed', sha256: sha(sealed) }],
          trainer: { command: [PYTHON, 'train_csv.py'], files: ['train_csv.py', 'cloister_train.py'] },
          hyperparameters: { steps: 40, checkpointEvery: 10, hidden: 16, label: 'label' },
          seed: 3,
          outputs: { recipients: ['kbs:///owner/model/key'] },
        }),
      );
      const r = await runJob(await prepareJob(join(work, 'job.json')), {
        broker,
        tee: { kind: 'sample', attester: new InsecureSampleAttester() },
        outputDir: join(work, 'out'),
        privateDir: { parent: shm },
        log: () => {},
        builtins: {},
        serveApi: (socketPath, session) => serveTrainingApi({ socketPath, session }),
        signReceipt: async (f) => utf8.encode(JSON.stringify(f)),
      });
      expect(r.status).toBe(0);
      expect(r.checkpoints.map((c) => c.step)).toEqual([10, 20, 30, 40]);
      expect(r.outputs.map((o) => o.file).sort()).toEqual(['metrics.json.sealed', 'model.pt.sealed']);
      const metrics = JSON.parse(
        utf8.decode(
          await openBytes(readFileSync(join(work, 'out', 'metrics.json.sealed')), {
            kind: 'kek',
            secret: broker.keks.get('owner/model/key')!,
          }),
        ),
      );
      expect(metrics).toBeTypeOf('object');
      expect(readdirSync(shm)).toEqual([]);
    });
  },
);
