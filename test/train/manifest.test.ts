import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { TrainError } from '../../src/train/errors.js';
import { parseManifest } from '../../src/train/manifest.js';
import { utf8 } from '../../src/util/bytes.js';
import { trainInitData } from '../../src/wire/kbs.js';

const SHA = 'a'.repeat(64);
const good = {
  version: 1,
  name: 'tiny',
  inputs: [{ name: 'corpus', path: 'c.sealed', sha256: SHA }],
  model: { path: 'm.sealed', sha256: SHA },
  trainer: { builtin: 'llama' },
  hyperparameters: { steps: 10 },
  seed: 1,
};
const parse = (v: unknown) => parseManifest(utf8.encode(typeof v === 'string' ? v : JSON.stringify(v)));

async function refusal(v: unknown): Promise<string> {
  const e = await parse(v).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(TrainError);
  expect((e as TrainError).code).toBe('bad-manifest');
  return (e as Error).message;
}

describe('job manifests', () => {
  it('parses a manifest, with defaults, and names the job by the digest of its bytes', async () => {
    const p = await parse(good);
    expect(p.job).toMatch(/^[0-9a-f]{64}$/);
    expect(p.manifest.recipients).toEqual([]);
    expect(p.manifest.checkpoints).toEqual({ everySteps: 0, everyMinutes: 10, dir: 'checkpoints' });
    // Another serialisation of the same content is another job.
    const spaced = await parse(JSON.stringify(good, null, 2));
    expect(spaced.job).not.toBe(p.job);
  });

  it('takes a command trainer with pinned files', async () => {
    const p = await parse({
      ...good,
      trainer: { command: ['python3', 'train.py'], files: ['train.py', { path: 'lib.py', sha256: SHA }] },
    });
    expect(p.manifest.trainer).toEqual({
      command: ['python3', 'train.py'],
      files: [{ path: 'train.py' }, { path: 'lib.py', sha256: SHA }],
    });
  });

  it.each([
    ['not JSON', '{', /^job manifest is not JSON/],
    ['an array', '[]', /must be a JSON object/],
    ['an unknown field', { ...good, epochs: 3 }, /^job manifest: epochs is not a known field/],
    ['a wrong version', { ...good, version: 2 }, /^job manifest: version must be 1/],
    ['no name', { ...good, name: '' }, /^job manifest: name must be a non-empty string/],
    [
      'a bad digest',
      { ...good, inputs: [{ name: 'c', path: 'c', sha256: 'ABC' }] },
      /inputs\[0\]\.sha256 must be 64 lower-case hex/,
    ],
    [
      'a repeated input name',
      { ...good, inputs: [good.inputs[0], good.inputs[0]] },
      /inputs\[1\]\.name repeats/,
    ],
    [
      'an unknown input field',
      { ...good, inputs: [{ ...good.inputs[0], url: 'x' }] },
      /inputs\[0\]\.url is not a known field/,
    ],
    [
      'an unknown builtin',
      { ...good, trainer: { builtin: 'gpt' } },
      /trainer\.builtin must be one of mlp, llama/,
    ],
    ['an empty command', { ...good, trainer: { command: [] } }, /trainer\.command must be a non-empty array/],
    ['a bad seed', { ...good, seed: -1 }, /^job manifest: seed must be a whole number/],
    [
      'a fractional cadence',
      { ...good, checkpoints: { everySteps: 1.5 } },
      /checkpoints\.everySteps must be a whole number/,
    ],
    [
      'a bad recipient',
      { ...good, outputs: { recipients: ['hpke:x'] } },
      /outputs\.recipients\[0\] must be kbs:\/\/\//,
    ],
    [
      'no recipient and no model',
      { ...good, model: undefined },
      /outputs\.recipients is needed when there is no starting model/,
    ],
    ['no inputs for a built-in', { ...good, inputs: [] }, /^job manifest: inputs must name at least one/],
  ])('refuses %s in one line naming the field', async (_what, doc, re) => {
    const m = await refusal(doc);
    expect(m).toMatch(re);
    expect(m).not.toContain('\n');
  });

  it('agrees with the published JSON Schema (docs/schema/train-job.v1.json) on what is well formed', async () => {
    const { Ajv2020 } = await import('ajv/dist/2020.js');
    const schema = JSON.parse(
      readFileSync(new URL('../../docs/schema/train-job.v1.json', import.meta.url), 'utf8'),
    );
    const validate = new Ajv2020({ strict: false }).compile(schema);
    const command = { ...good, trainer: { command: ['python3', 'train.py'], files: ['train.py'] } };
    for (const doc of [good, command, { ...good, outputs: { recipients: ['kbs:///a/b/c'] } }]) {
      expect(validate(doc), JSON.stringify(validate.errors)).toBe(true);
      await parse(doc);
    }
    for (const doc of [
      { ...good, epochs: 3 },
      { ...good, seed: -1 },
      { ...good, trainer: { builtin: 'gpt' } },
      { ...good, inputs: [{ name: 'c', path: 'c', sha256: 'ABC' }] },
      { ...good, outputs: { recipients: ['hpke:x'] } },
      { ...good, checkpoints: { everySteps: 1.5 } },
    ]) {
      expect(validate(doc)).toBe(false);
      await expect(parse(doc)).rejects.toThrow(TrainError);
    }
  });

  it('fine-tuning: a base for the LoRA trainers, recipients required, merged only for lora; the schema agrees', async () => {
    const { Ajv2020 } = await import('ajv/dist/2020.js');
    const schema = JSON.parse(
      readFileSync(new URL('../../docs/schema/train-job.v1.json', import.meta.url), 'utf8'),
    );
    const validate = new Ajv2020({ strict: false }).compile(schema);
    const base = { path: 'base.gguf.sealed', sha256: 'a'.repeat(64) };
    const { model: _model, ...noModel } = good;
    const lora = {
      ...noModel,
      base,
      trainer: { builtin: 'lora' },
      outputs: { recipients: ['kbs:///co/adapter/kek'] },
    };
    for (const doc of [lora, { ...lora, outputs: { recipients: ['kbs:///co/adapter/kek'], merged: true } }]) {
      expect(validate(doc), JSON.stringify(validate.errors)).toBe(true);
      const m = (await parse(doc)).manifest;
      expect(m.base).toEqual(base);
    }
    expect((await parse(lora)).manifest.merged).toBe(false);
    await expect(parse({ ...lora, base: undefined })).rejects.toThrow(
      'job manifest: base is needed by trainer.builtin lora',
    );
    await expect(parse({ ...noModel, base, outputs: { recipients: ['kbs:///a/b/c'] } })).rejects.toThrow(
      /job manifest: base is for fine-tuning/,
    );
    await expect(parse({ ...lora, outputs: undefined })).rejects.toThrow(
      /outputs\.recipients is needed for fine-tuning/,
    );
    await expect(parse({ ...good, outputs: { recipients: ['kbs:///a/b/c'], merged: true } })).rejects.toThrow(
      'job manifest: outputs.merged is for trainer.builtin lora',
    );
    await expect(
      parse({ ...lora, outputs: { recipients: ['kbs:///a/b/c'], merged: 'yes' } }),
    ).rejects.toThrow('job manifest: outputs.merged must be true or false');
    await expect(parse({ ...lora, model: base })).rejects.toThrow(/job manifest: model is not read by/);
    expect(validate({ ...lora, base: { path: 'x' } })).toBe(false);
  });

  it('makes init-data that names the job and the trainer, in one fixed serialisation', () => {
    const body = trainInitData('b'.repeat(64), 'sha256:c', ['kbs:///o/m/k']);
    expect(body).toBe(
      `{"version":"0.1.0","algorithm":"sha256","data":{"cloister.train.manifest":"${'b'.repeat(64)}","cloister.train.trainer":"sha256:c","cloister.train.recipients":"[\\"kbs:///o/m/k\\"]"}}`,
    );
    // Fine-tuning adds the base and what leaves the TEE, for the base's owner to approve.
    const tuned = JSON.parse(
      trainInitData('b'.repeat(64), 'sha256:c', ['kbs:///o/m/k'], {
        sha256: 'd'.repeat(64),
        outputs: 'adapter',
      }),
    );
    expect(tuned.data['cloister.train.base']).toBe('d'.repeat(64));
    expect(tuned.data['cloister.train.outputs']).toBe('adapter');
  });
});
