/**
 * The whole runner killed: `cloister train` (a process, as an operator runs it) is SIGKILLed after its
 * second checkpoint; started again, it resumes from that checkpoint and ends with the same model,
 * byte for byte, as a run never stopped. A host that then puts an older checkpoint back is refused.
 */
import { createHash } from 'node:crypto';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { openBytes, sealBytes } from '../../src/seal/container.js';
import { generateKek, type KekKey, kekToJwk } from '../../src/seal/keys.js';
import { utf8 } from '../../src/util/bytes.js';
import { cliTimeouts } from '../cli/run.js';
import { type TestBroker, testBroker } from '../kbs/helpers.js';
import { cli, ensureBuilt, waitFor } from '../tee/helpers.js';

vi.setConfig(cliTimeouts(180_000));

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let b: TestBroker;
let work: string;
let shm: string;
const keks: Record<string, KekKey> = {};

beforeAll(async () => {
  ensureBuilt();
  b = await testBroker({ devMode: true, db: 'memory:' });
  for (const path of ['data/corpus/kek', 'owner/model/kek']) {
    keks[path] = generateKek(`kbs:///${path}`);
    const token = await b.admin('tenant-admin', path.split('/')[0]);
    await b.call(
      'PUT',
      `/admin/v1/resources/${path}`,
      token,
      utf8.encode(JSON.stringify(kekToJwk(keks[path]!))),
    );
    await b.call('PUT', '/admin/v1/policies', token, {
      scope: `resource:${path}`,
      source: 'dev_mode && cpu.insecure',
    });
  }
  work = mkdtempSync(join(tmpdir(), 'cloister-crash-'));
  shm = mkdtempSync('/dev/shm/cloister-crash-');
  const sealed = await sealBytes(utf8.encode('a small corpus about sealed models. '.repeat(60)), {
    recipients: [{ type: 'kbs', uri: 'kbs:///data/corpus/kek', kek: keks['data/corpus/kek']!.secret }],
    name: 'corpus.txt',
  });
  writeFileSync(join(work, 'corpus.txt.sealed'), sealed);
  for (const name of ['straight', 'crashed']) {
    writeFileSync(
      join(work, `${name}.json`),
      JSON.stringify({
        version: 1,
        name,
        inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: sha(sealed) }],
        trainer: { builtin: 'llama' },
        hyperparameters: { steps: 40, dim: 32, layers: 1, heads: 2, seq: 32, batch: 2 },
        seed: 9,
        outputs: { recipients: ['kbs:///owner/model/kek'] },
        checkpoints: { everySteps: 5, dir: `${name}-checkpoints` },
      }),
    );
  }
});
afterAll(async () => {
  await b.close();
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

const train = (job: string) =>
  cli([
    'train',
    join(work, `${job}.json`),
    '--kbs',
    b.url,
    '--tee',
    'sample',
    '--private-dir',
    shm,
    '--output-dir',
    join(work, `${job}-out`),
  ]);

const model = async (job: string) =>
  openBytes(readFileSync(join(work, `${job}-out`, 'model.gguf.sealed')), {
    kind: 'kek',
    secret: keks['owner/model/kek']!.secret,
  });

describe('cloister train killed with SIGKILL', () => {
  it('resumes from the newest checkpoint and ends with the same model as a run never stopped', async () => {
    const straight = await train('straight').done;
    expect(straight.code, straight.stderr).toBe(0);

    const run = train('crashed');
    await waitFor(run.stderr, /checkpoint 2 at step 10 sealed/, run.child);
    run.child.kill('SIGKILL');
    await run.done;
    expect(readdirSync(join(work, 'crashed-out')).filter((f) => f.endsWith('.sealed'))).toEqual([]);

    const again = await train('crashed').done;
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/resumed from checkpoint \d+ \(step \d+\)/);
    expect(sha(await model('crashed'))).toBe(sha(await model('straight')));
    // The private directory the killed runner left is swept by the next run.
    expect(readdirSync(shm)).toEqual([]);
  });

  it('never writes its metrics through a link the host planted', async () => {
    const victim = join(work, 'victim.txt');
    writeFileSync(victim, 'victim\n');
    rmSync(join(work, 'straight-out', 'metrics.jsonl'), { force: true });
    symlinkSync(victim, join(work, 'straight-out', 'metrics.jsonl'));
    const r = await train('straight').done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /metrics file .*metrics\.jsonl: is a symbolic link; refusing to write through it/,
    );
    expect(readFileSync(victim, 'utf8')).toBe('victim\n');
  });

  it('refuses to resume from an older checkpoint put back by the host', async () => {
    const dir = join(work, 'crashed-checkpoints');
    const newest = readdirSync(dir).sort().at(-1)!;
    unlinkSync(join(dir, newest));
    rmSync(join(work, 'crashed-out'), { recursive: true });
    const r = await train('crashed').done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the key broker holds checkpoint \d+ .* refusing to roll back/);
    expect(
      r.stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('cloister:')),
    ).toHaveLength(1);
  });
});
