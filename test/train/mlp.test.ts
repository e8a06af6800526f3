import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMlpTrainer, MlpError, type MlpTrainer } from '../../src/train/mlp/index.js';
import {
  CLASSIFY,
  classification,
  type Fixture,
  fixtureDir,
  input,
  REGRESS,
  regression,
  toCsv,
  toJsonl,
} from './mlp-fixtures.js';
import { writeParquet } from './parquet-writer.js';

let fx: Fixture;
let classCsv: string;
let regressCsv: string;
const open: MlpTrainer[] = [];

beforeAll(async () => {
  fx = await fixtureDir();
  classCsv = await fx.write('classes.csv', toCsv(classification(400)));
  regressCsv = await fx.write('values.csv', toCsv(regression(400)));
});
afterAll(async () => {
  for (const t of open) t.dispose();
  await fx.cleanup();
});

async function trainer(file: string, hp: Record<string, unknown>, seed = 7): Promise<MlpTrainer> {
  const t = await createMlpTrainer(input(file, hp, seed));
  open.push(t);
  return t;
}

async function run(t: MlpTrainer, steps: number): Promise<number[]> {
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push((await t.step()).loss);
  return losses;
}

describe('learning', () => {
  it('classifies a separable table (held-out accuracy > 0.9)', async () => {
    const t = await trainer(classCsv, CLASSIFY);
    expect(t.layout.classes).toEqual(['a', 'b', 'c']);
    expect(t.layout.inputs).toEqual(['x1', 'x2', 'colour=blue', 'colour=green', 'colour=red']);
    expect(t.rows).toEqual({ train: 320, heldOut: 80 });
    const before = await t.evaluate();
    const losses = await run(t, CLASSIFY.steps);
    const after = await t.evaluate();
    expect(t.completedSteps).toBe(300);
    expect(after.accuracy).toBeGreaterThan(0.9);
    expect(after.heldout_loss).toBeLessThan(before.heldout_loss! / 2);
    expect(losses.at(-1)).toBeLessThan(losses[0]!);
    const [p] = t.predict([{ x1: 90, x2: 0.5, colour: 'red' }]);
    expect(p).toMatchObject({ label: 'a' });
    // An unseen category encodes as all zeros rather than failing.
    expect(t.predict([{ x1: 5, x2: -0.5, colour: 'mauve' }])).toHaveLength(1);
  });

  it('regresses (held-out rmse drops), with GELU', async () => {
    const t = await trainer(regressCsv, { ...REGRESS, activation: 'gelu' });
    const before = await t.evaluate();
    await run(t, REGRESS.steps);
    const after = await t.evaluate();
    expect(after.rmse).toBeLessThan(before.rmse! * 0.3);
    expect(after.rmse).toBeLessThan(0.5);
    const [p] = t.predict([{ x1: 50, x2: 0, colour: 'red' }]);
    expect((p as { value: number }).value).toBeCloseTo(13, 0);
  });

  it('reads CSV, JSON Lines and Parquet into the same model', async () => {
    const data = classification(120, 3);
    const jsonl = await fx.write('same.jsonl', toJsonl(data));
    const csv = await fx.write('same.csv', toCsv(data));
    const parquet = await fx.write(
      'same.parquet',
      writeParquet([
        { name: 'x1', type: 'double', values: data.rows.map((r) => r[0] as number) },
        { name: 'x2', type: 'double', values: data.rows.map((r) => r[1] as number) },
        { name: 'colour', type: 'string', values: data.rows.map((r) => r[2] as string) },
        { name: 'label', type: 'string', values: data.rows.map((r) => r[3] as string) },
      ]),
    );
    const hp = { ...CLASSIFY, steps: 5 };
    const states: Uint8Array[] = [];
    for (const file of [csv, jsonl, parquet]) {
      const t = await trainer(file, hp);
      await run(t, 5);
      states.push(t.saveState());
    }
    expect(states[1]).toEqual(states[0]);
    expect(states[2]).toEqual(states[0]);
  });

  it('takes classes of a numeric label in numeric order, and a subset of features', async () => {
    const rows = classification(60, 5).rows.map(([x1, x2, colour, label]) =>
      [x1, x2, colour, { a: 10, b: 2, c: 1 }[label as 'a' | 'b' | 'c']].join(','),
    );
    const file = await fx.write('numeric-label.csv', `x1,x2,colour,label\n${rows.join('\n')}\n`);
    const t = await trainer(file, { ...CLASSIFY, steps: 1, features: ['colour', 'x1'] });
    expect(t.layout.classes).toEqual(['1', '2', '10']);
    expect(t.layout.inputs).toEqual(['colour=blue', 'colour=green', 'colour=red', 'x1']);
    expect(t.rows).toEqual({ train: 48, heldOut: 12 });
  });
});

describe('determinism and resume', () => {
  const hp = { ...CLASSIFY, steps: 40, batch: 48 };

  it('trains bit-identically twice, and differently with another seed', async () => {
    const a = await trainer(classCsv, hp);
    const b = await trainer(classCsv, hp);
    const c = await trainer(classCsv, hp, 8);
    const la = await run(a, 20);
    const lb = await run(b, 20);
    await run(c, 20);
    expect(lb).toEqual(la);
    expect(b.saveState()).toEqual(a.saveState());
    expect(c.saveState()).not.toEqual(a.saveState());
  });

  it('resumes bit-identically: 2k steps straight = k steps, save, load into a fresh trainer, k steps', async () => {
    const straight = await trainer(classCsv, hp);
    const lossesStraight = await run(straight, 40);

    const first = await trainer(classCsv, hp);
    const lossesFirst = await run(first, 20);
    const state = first.saveState();
    first.dispose();

    const second = await trainer(classCsv, hp);
    second.loadState(state);
    expect(second.completedSteps).toBe(20);
    const lossesSecond = await run(second, 20);

    expect([...lossesFirst, ...lossesSecond]).toEqual(lossesStraight);
    expect(second.saveState()).toEqual(straight.saveState());
    expect(await second.evaluate()).toEqual(await straight.evaluate());
    const [fa, fb] = [await straight.exportModel(), await second.exportModel()];
    expect(fb).toEqual(fa);
  });

  it('refuses a foreign state: other hyperparameters, other data, another trainer, damage', async () => {
    const t = await trainer(classCsv, hp);
    await run(t, 2);
    const good = t.saveState();
    const otherLr = await trainer(classCsv, { ...hp, lr: 0.02 });
    const otherData = await trainer(await fx.write('other.csv', toCsv(classification(400, 9))), hp);
    const refuse = (target: MlpTrainer, state: Uint8Array, message: string) => {
      expect(() => target.loadState(state)).toThrow(
        expect.objectContaining({ code: 'checkpoint-state', message: expect.stringContaining(message) }),
      );
    };
    refuse(otherLr, good, 'saved with other hyperparameters, seed or data');
    refuse(otherData, good, 'saved with other hyperparameters, seed or data');
    refuse(t, new TextEncoder().encode('GGUF....'), 'not a state of the mlp trainer');
    refuse(t, good.subarray(0, good.length - 4), 'bytes, expected');
    const forged = good.slice();
    const header = new TextDecoder().decode(forged.subarray(12, 12 + 20));
    expect(header.startsWith('{"trainer":"mlp"')).toBe(true);
    forged.set(new TextEncoder().encode('{"trainer":"xyz"'), 12);
    refuse(t, forged, 'saved by trainer "xyz", not mlp');
    // A refused state leaves the trainer as it was.
    expect(t.completedSteps).toBe(2);
    expect(t.saveState()).toEqual(good);
  });
});

describe('refusals', () => {
  async function refused(file: string, hp: Record<string, unknown>): Promise<MlpError> {
    try {
      const t = await createMlpTrainer(input(file, hp));
      t.dispose();
    } catch (e) {
      expect(e).toBeInstanceOf(MlpError);
      return e as MlpError;
    }
    throw new Error('expected an MlpError');
  }

  it.each([
    [{ ...CLASSIFY, steps: 0 }, 'hyperparameters.steps: must be a whole number from 1'],
    [{ ...CLASSIFY, steps: undefined }, 'hyperparameters.steps: required'],
    [{ ...CLASSIFY, batch: 2.5 }, 'hyperparameters.batch: must be a whole number from 1 to 65536, got 2.5'],
    [{ ...CLASSIFY, lr: -1 }, 'hyperparameters.lr: must be a number in (0, 1], got -1'],
    [{ ...CLASSIFY, lr: '0.1' }, 'hyperparameters.lr: must be a number in (0, 1], got "0.1"'],
    [{ ...CLASSIFY, hidden: 64 }, 'hyperparameters.hidden: must be a list of at most 16 layer widths'],
    [{ ...CLASSIFY, hidden: [64, 0] }, 'hyperparameters.hidden: must be a list'],
    [
      { ...CLASSIFY, hidden: [16384, 16384, 16384] },
      'hyperparameters.hidden: 537,051,139 parameters with 5 inputs; at most 50,000,000',
    ],
    [
      { ...CLASSIFY, task: 'cluster' },
      'hyperparameters.task: must be "classify" or "regress", got "cluster"',
    ],
    [{ ...CLASSIFY, task: undefined }, 'hyperparameters.task: required'],
    [
      { ...CLASSIFY, label: 'price' },
      'hyperparameters.label: classes.csv has no column "price" (columns: x1, x2, colour, label)',
    ],
    [{ ...CLASSIFY, label: undefined }, 'hyperparameters.label: required'],
    [{ ...CLASSIFY, features: ['x1', 'nope'] }, 'hyperparameters.features: classes.csv has no column "nope"'],
    [{ ...CLASSIFY, features: ['x1', 'label'] }, 'hyperparameters.features: lists the label column "label"'],
    [{ ...CLASSIFY, features: [] }, 'hyperparameters.features: must be a non-empty list'],
    [{ ...CLASSIFY, heldOut: 1 }, 'hyperparameters.heldOut: must be a fraction in (0, 1), got 1'],
    [{ ...CLASSIFY, weightDecay: -0.1 }, 'hyperparameters.weightDecay: must be a number in [0, 1]'],
    [{ ...CLASSIFY, activation: 'tanh' }, 'hyperparameters.activation: must be "relu" or "gelu"'],
    [{ ...CLASSIFY, hiden: [8] }, 'hyperparameters.hiden: not a hyperparameter of the mlp trainer'],
  ])('refuses bad hyperparameters %#', async (hp, message) => {
    const e = await refused(classCsv, hp);
    expect(e.code).toBe('bad-hyperparameter');
    expect(e.message).toContain(message);
  });

  it('names the line and column of a non-numeric value', async () => {
    const rows = classification(30).rows.map((r) => r.join(','));
    rows[15] = rows[15]!.replace(/^[^,]+/, 'abc');
    const file = await fx.write('train.csv', `x1,x2,colour,label\n${rows.join('\n')}\n`);
    const e = await refused(file, CLASSIFY);
    expect(e.code).toBe('bad-input');
    expect(e.message).toBe('train.csv line 17: column x1: "abc" is not a number');
  });

  it.each([
    ['empty.csv', 'x1,x2,colour,label\n', 'empty.csv: no rows below the header'],
    ['blank.jsonl', '\n', 'blank.jsonl: no rows'],
    [
      'gap.csv',
      'x1,x2,colour,label\n1,2,red,a\n3,,red,b\n4,5,blue,a\n',
      'gap.csv line 3: column x2: missing value',
    ],
    [
      'nolabel.csv',
      'x1,x2,colour,label\n1,2,red,a\n3,4,red,\n4,5,blue,a\n',
      'nolabel.csv line 3: column label: missing value',
    ],
    [
      'one.csv',
      'x1,x2,colour,label\n1,2,red,a\n3,4,red,a\n4,5,blue,a\n',
      'one.csv: column label: 1 distinct value; classify needs at least 2',
    ],
    ['table.txt', 'x1\n1\n', 'not a table by its name'],
  ])('refuses bad input %s', async (name, content, message) => {
    const e = await refused(await fx.write(name, content), CLASSIFY);
    expect(e.code).toBe('bad-input');
    expect(e.message).toContain(message);
  });

  it('refuses a string label for regression, naming its first row', async () => {
    const e = await refused(classCsv, { ...REGRESS, label: 'colour' });
    expect(e.code).toBe('bad-input');
    expect(e.message).toMatch(/^classes\.csv line 2: column colour: "\w+" is not a number \(task "regress"/);
  });

  it('refuses a held-out fraction that leaves nothing to train on', async () => {
    const file = await fx.write('two.csv', 'x,label\n1,a\n2,b\n');
    const e = await refused(file, { ...CLASSIFY, heldOut: 0.9 });
    expect(e.message).toBe('hyperparameters.heldOut: holding out 2 of 2 rows leaves none to train on');
  });

  it('refuses a manifest with no input, two inputs, or a starting model', async () => {
    const base = input(classCsv, CLASSIFY);
    await expect(createMlpTrainer({ ...base, inputs: [] })).rejects.toMatchObject({ code: 'bad-input' });
    await expect(createMlpTrainer({ ...base, inputs: [base.inputs[0]!, base.inputs[0]!] })).rejects.toThrow(
      'the mlp trainer reads one table (inputs[0]); the manifest names 2 inputs',
    );
    await expect(createMlpTrainer({ ...base, startModel: { name: 'm', path: classCsv } })).rejects.toThrow(
      'takes no starting model',
    );
  });

  it('refuses a bad prediction row, naming row and feature', async () => {
    const t = await trainer(classCsv, { ...CLASSIFY, steps: 1 });
    expect(() =>
      t.predict([
        { x1: 1, x2: 0, colour: 'red' },
        { x1: 'lots', x2: 0, colour: 'red' },
      ]),
    ).toThrow('row 2: feature x1: "lots" is not a number');
  });
});
