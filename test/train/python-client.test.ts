import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveTrainingApi } from '../../src/train/api.js';
import { codedError, FakeSession, jobInfo } from './fake-session.js';
import { PYTHON, pythonCannot, runPython } from './python.js';

// One Python process runs the whole client against the API on a fake session, so the file costs one
// interpreter start; the script prints what it saw as one JSON object, checked here.
const SCRIPT = `
import json, math, os, sys
from cloister_train import TrainingApiError, TrainingClient

out = {}
def refusal(fn):
    try:
        fn()
    except TrainingApiError as e:
        return [e.code, e.status, e.message]
    return None

c = TrainingClient()  # from CLOISTER_TRAIN_SOCKET
out["job"] = c.job()
out["before"] = c.load_checkpoint()
out["save1"] = c.save_checkpoint(b"first state", 3)
big = bytes(range(256)) * (8 * 4096)  # 8 MiB
out["save2"] = c.save_checkpoint(bytearray(big), 6)
number, step, state = c.load_checkpoint()
out["latest"] = [number, step, len(state), state == big]
out["save3"] = c.save_checkpoint(memoryview(b"third"), 9)
c.metrics(9, loss=0.25, accuracy=1)
c.metrics(10, **{"train/loss": 0.5})
out["nan"] = refusal(lambda: c.metrics(11, loss=math.nan))
out["bad_name"] = refusal(lambda: c.metrics(11, **{"bad name": 1.0}))
out["bad_step"] = refusal(lambda: c.save_checkpoint(b"x", -1))
out["rollback"] = refusal(lambda: c.save_checkpoint(b"x", 666))
out["too_large"] = refusal(lambda: c.save_checkpoint(bytes(17 << 20), 12))
c.finish(accuracy=0.75)
out["after_finish"] = refusal(lambda: c.save_checkpoint(b"late", 13))
out["unreachable"] = refusal(lambda: TrainingClient(os.environ["CLOISTER_TRAIN_SOCKET"] + ".nope").job())
del os.environ["CLOISTER_TRAIN_SOCKET"]
out["no_socket"] = refusal(lambda: TrainingClient())
print(json.dumps(out))
`;

const cannot = pythonCannot('import sys; assert sys.version_info >= (3, 9), sys.version');

describe.skipIf(cannot !== undefined)(`python/cloister_train.py (${cannot ?? PYTHON})`, () => {
  let work: string;
  let socketPath: string;
  let session: FakeSession;
  let close: () => Promise<void>;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'cloister-train-py-'));
    socketPath = join(work, 'train.sock');
    session = new FakeSession(jobInfo({ inputs: { data: join(work, 'data.csv') }, outputDir: work }));
    const save = session.save.bind(session);
    session.save = (state, step) =>
      step === 666
        ? Promise.reject(codedError('checkpoint-rollback', 'the broker holds a later one'))
        : save(state, step);
    ({ close } = await serveTrainingApi({ socketPath, session, maxCheckpointBytes: 16 << 20 }));
  });
  afterAll(async () => {
    await close();
    rmSync(work, { recursive: true, force: true });
  });

  it('job, checkpoints, metrics, refusals and finish from Python', { timeout: 120_000 }, async () => {
    const script = join(work, 'client.py');
    writeFileSync(script, SCRIPT);
    const r = await runPython([script], { CLOISTER_TRAIN_SOCKET: socketPath }).done;
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);

    expect(out.job).toEqual(session.info);
    expect(out.before).toBeNull();
    expect(out.save1).toEqual({
      number: 1,
      sha256: createHash('sha256').update('first state').digest('hex'),
    });
    expect(out.save2.number).toBe(2);
    expect(out.latest).toEqual([2, 6, 8 << 20, true]);
    expect(out.save3.number).toBe(3);
    expect(session.checkpoints.map((c) => [c.number, c.step])).toEqual([
      [1, 3],
      [2, 6],
      [3, 9],
    ]);
    expect(Buffer.from(session.checkpoints[2]!.state).toString()).toBe('third');
    expect(session.metricsSeen).toEqual([
      { step: 9, loss: 0.25, accuracy: 1 },
      { step: 10, 'train/loss': 0.5 },
    ]);

    expect(out.nan.slice(0, 2)).toEqual(['bad-metrics', null]);
    expect(out.nan[2]).toMatch(/^loss: must be a finite number/);
    expect(out.bad_name.slice(0, 2)).toEqual(['bad-metrics', 400]);
    expect(out.bad_name[2]).toMatch(/^"bad name"/);
    expect(out.bad_step.slice(0, 2)).toEqual(['bad-step', null]);
    expect(out.rollback).toEqual(['checkpoint-rollback', 409, 'the broker holds a later one']);
    // Refused by its Content-Length; the server reads the rest, so Python gets the problem, not EPIPE.
    expect(out.too_large.slice(0, 2)).toEqual(['too-large', 413]);
    expect(session.finishCalls).toEqual([{ accuracy: 0.75 }]);
    expect(out.after_finish.slice(0, 2)).toEqual(['finished', 409]);
    expect(out.unreachable[0]).toBe('unreachable');
    expect(out.unreachable[2]).toContain('.nope');
    expect(out.no_socket[0]).toBe('unreachable');
    expect(out.no_socket[2]).toContain('CLOISTER_TRAIN_SOCKET');
  });
});
