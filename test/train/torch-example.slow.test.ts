import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveTrainingApi } from '../../src/train/api.js';
import { FakeSession, jobInfo } from './fake-session.js';
import { PYTHON, type PyRun, pythonCannot, runPython } from './python.js';

// python/examples/train_csv.py end to end against the API on a fake session: a run never stopped, and
// a run killed (SIGKILL) just after its second checkpoint then started again, which resumes from that
// checkpoint. Both must end with the same model.pt, byte for byte, and the same checkpoints.

const EXAMPLE = new URL('../../python/examples/train_csv.py', import.meta.url).pathname;
const STEPS = 60;
const EVERY = 10;

/** A small separable table: four numeric features, three classes. */
function csv(): string {
  let s = 12345;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31 - 0.5;
  };
  const lines = ['f1,f2,f3,f4,species'];
  for (let i = 0; i < 240; i++) {
    const f = [next(), next(), next(), next()];
    const score = f[0]! + 0.5 * f[1]! - f[2]!;
    const label = score > 0.25 ? 'alpha' : score < -0.25 ? 'gamma' : 'beta';
    lines.push(`${f.map((v) => v.toFixed(4)).join(',')},${label}`);
  }
  return `${lines.join('\n')}\n`;
}

const cannot = pythonCannot('import torch');
// CI installs python3-torch and sets this, so a broken install fails rather than skips.
if (cannot && process.env.CLOISTER_REQUIRE_TORCH === '1') throw new Error(cannot);

describe.skipIf(cannot !== undefined)(
  `python/examples/train_csv.py with PyTorch (${cannot ?? PYTHON})`,
  () => {
    let work: string;
    let data: string;
    const servers: (() => Promise<void>)[] = [];

    beforeAll(() => {
      work = mkdtempSync(join(tmpdir(), 'cloister-train-torch-'));
      data = join(work, 'iris-like.csv');
      writeFileSync(data, csv());
    });
    afterAll(async () => {
      for (const close of servers) await close();
      rmSync(work, { recursive: true, force: true });
    });

    /** A fake session and its API for one job; the trainer writes into its own output folder. */
    async function job(name: string) {
      const outputDir = join(work, name);
      mkdirSync(outputDir);
      const session = new FakeSession(
        jobInfo({
          name,
          inputs: { table: data },
          outputDir,
          seed: 7,
          hyperparameters: { steps: STEPS, batch: 16, lr: 0.02, hidden: [16], checkpointEvery: EVERY },
        }),
      );
      const socketPath = join(work, `${name}.sock`);
      const { close } = await serveTrainingApi({ socketPath, session });
      servers.push(close);
      const run = () => runPython([EXAMPLE], { CLOISTER_TRAIN_SOCKET: socketPath });
      return { session, outputDir, run };
    }

    const ok = (r: PyRun) => {
      expect(r.code, r.stderr).toBe(0);
      return r;
    };

    it('trains, checkpoints, reports and finishes; killed and resumed it ends with the same bytes', async () => {
      const whole = await job('whole');
      ok(await whole.run().done);
      const model = readFileSync(join(whole.outputDir, 'model.pt'));
      const metrics = JSON.parse(readFileSync(join(whole.outputDir, 'metrics.json'), 'utf8'));
      expect(metrics.steps).toBe(STEPS);
      expect(metrics.heldout_accuracy).toBeGreaterThan(0.6);
      expect(whole.session.finishCalls).toEqual([metrics]);
      expect(whole.session.checkpoints.map((c) => c.step)).toEqual([10, 20, 30, 40, 50, 60]);
      expect(whole.session.metricsSeen.map((m) => m.step)).toEqual(
        Array.from({ length: STEPS }, (_, i) => i + 1),
      );
      expect(whole.session.metricsSeen.every((m) => Number.isFinite(m.loss) && 'batch_accuracy' in m)).toBe(
        true,
      );

      const cut = await job('cut');
      const first = cut.run();
      // Killed while it waits for the answer to its second save: the checkpoint is stored, the
      // trainer never hears so, as when a machine dies at that moment.
      cut.session.onSave = (c) => {
        if (c.number === 2) first.child.kill('SIGKILL');
      };
      const killed = await first.done;
      expect(killed.signal).toBe('SIGKILL');
      expect(existsSync(join(cut.outputDir, 'model.pt'))).toBe(false);
      expect(cut.session.finishCalls).toEqual([]);
      expect(cut.session.checkpoints.map((c) => c.step)).toEqual([10, 20]);

      cut.session.onSave = undefined;
      const resumed = ok(await cut.run().done);
      expect(resumed.stderr).toContain('resuming after step 20');
      expect(cut.session.checkpoints.map((c) => c.step)).toEqual([10, 20, 30, 40, 50, 60]);
      // Same final weights and the same loss at every step from the resume on. (The checkpoints'
      // bytes differ although their tensors are equal: pickle shares a repeated string only when it is
      // one object, and the optimizer's state keys are fresh strings after torch.load.)
      expect(readFileSync(join(cut.outputDir, 'model.pt')).equals(model)).toBe(true);
      expect(JSON.parse(readFileSync(join(cut.outputDir, 'metrics.json'), 'utf8'))).toEqual(metrics);
      expect(cut.session.metricsSeen.filter((m) => m.step > 20).slice(-40)).toEqual(
        whole.session.metricsSeen.slice(20),
      );
      expect(cut.session.finishCalls).toEqual([metrics]);
    });

    it('names a bad hyperparameter and exits 2', async () => {
      const bad = await job('bad');
      (bad.session.info.hyperparameters as Record<string, unknown>).steps = 'many';
      const r = await bad.run().done;
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('hyperparameters.steps');
      expect(bad.session.finishCalls).toEqual([]);
    });
  },
);
