import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMlpTrainer, type MlpTrainer } from '../../src/train/mlp/index.js';
import type { ModelFile } from '../../src/train/trainer.js';
import {
  CLASSIFY,
  classification,
  type Fixture,
  fixtureDir,
  input,
  REGRESS,
  regression,
  toCsv,
} from './mlp-fixtures.js';

let fx: Fixture;
const open: MlpTrainer[] = [];

beforeAll(async () => {
  fx = await fixtureDir();
});
afterAll(async () => {
  for (const t of open) t.dispose();
  await fx.cleanup();
});

interface Safetensors {
  metadata: Record<string, string>;
  tensors: Record<string, { shape: number[]; data: Float32Array }>;
}

/** An independent safetensors reader: the header, its alignment, and each tensor's bytes. */
function readSafetensors(bytes: Uint8Array): Safetensors {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  expect(n % 8).toBe(0);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, unknown>;
  const { __metadata__: metadata, ...rest } = header;
  const tensors: Safetensors['tensors'] = {};
  let end = 0;
  for (const [name, info] of Object.entries(rest)) {
    const { dtype, shape, data_offsets } = info as {
      dtype: string;
      shape: number[];
      data_offsets: [number, number];
    };
    expect(dtype).toBe('F32');
    const [a, b] = data_offsets;
    const data = new Float32Array((b - a) / 4);
    for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(8 + n + a + i * 4, true);
    expect(data.length).toBe(shape.reduce((x, y) => x * y, 1));
    tensors[name] = { shape, data };
    end = Math.max(end, b);
  }
  expect(8 + n + end).toBe(bytes.length);
  return { metadata: metadata as Record<string, string>, tensors };
}

function file(files: ModelFile[], name: string): Uint8Array {
  const f = files.find((x) => x.name === name);
  expect(f, name).toBeDefined();
  return f!.bytes;
}

/** Raw ONNX inputs for rows: numeric features as they are, one 0/1 column per category. */
function rawInputs(t: MlpTrainer, rows: Record<string, unknown>[]): Float32Array {
  const width = t.layout.inputs.length;
  const x = new Float32Array(rows.length * width);
  for (const [i, row] of rows.entries()) {
    let o = 0;
    for (const f of t.layout.features) {
      if (f.kind === 'number') x[i * width + o++] = row[f.name] as number;
      else {
        const k = f.values.indexOf(String(row[f.name]));
        if (k >= 0) x[i * width + o + k] = 1;
        o += f.values.length;
      }
    }
  }
  return x;
}

async function runOnnx(
  bytes: Uint8Array,
  x: Float32Array,
  rows: number,
  width: number,
): Promise<Float32Array> {
  // Imported here only: onnxruntime-node is a dev dependency, and src/train must not need it.
  const ort = await import('onnxruntime-node');
  const session = await ort.InferenceSession.create(bytes);
  try {
    const out = await session.run({ input: new ort.Tensor('float32', x, [rows, width]) });
    return out[session.outputNames[0]!]!.data as Float32Array;
  } finally {
    await session.release();
  }
}

const probeRows = (n: number) =>
  classification(n, 11).rows.map(([x1, x2, colour]) => ({ x1, x2, colour }) as Record<string, unknown>);

describe('exportModel', () => {
  it('writes safetensors with the layout in its metadata, and an ONNX classifier that agrees with predict()', async () => {
    const t = await createMlpTrainer(
      input(await fx.write('c.csv', toCsv(classification(300))), { ...CLASSIFY, steps: 60, hidden: [12, 8] }),
    );
    open.push(t);
    for (let i = 0; i < 60; i++) await t.step();
    const files = await t.exportModel();
    expect(files.map((f) => f.name)).toEqual(['model.safetensors', 'model.onnx']);

    const st = readSafetensors(file(files, 'model.safetensors'));
    expect(st.metadata.format).toBe('cloister-mlp');
    expect(JSON.parse(st.metadata.classes!)).toEqual(['a', 'b', 'c']);
    expect(JSON.parse(st.metadata.inputs!)).toEqual([
      'x1',
      'x2',
      'colour=blue',
      'colour=green',
      'colour=red',
    ]);
    const features = JSON.parse(st.metadata.features!);
    expect(features[0]).toMatchObject({ name: 'x1', kind: 'number' });
    expect(features[0].mean).toBeGreaterThan(40);
    expect(features[2]).toEqual({ name: 'colour', kind: 'category', values: ['blue', 'green', 'red'] });
    expect(Object.fromEntries(Object.entries(st.tensors).map(([k, v]) => [k, v.shape]))).toEqual({
      'input.mean': [5],
      'input.std': [5],
      'layers.0.weight': [12, 5],
      'layers.0.bias': [12],
      'layers.1.weight': [8, 12],
      'layers.1.bias': [8],
      'layers.2.weight': [3, 8],
      'layers.2.bias': [3],
    });
    expect(st.tensors['input.mean']!.data[0]).toBe(features[0].mean);

    const rows = probeRows(300); // more than one 256-row forward chunk
    const expected = t.predict(rows).map((p) => (p as { probabilities: number[] }).probabilities);
    const got = await runOnnx(file(files, 'model.onnx'), rawInputs(t, rows), rows.length, 5);
    let maxDiff = 0;
    for (const [r, probs] of expected.entries()) {
      for (const [c, p] of probs.entries()) maxDiff = Math.max(maxDiff, Math.abs(p - got[r * 3 + c]!));
    }
    expect(maxDiff).toBeLessThanOrEqual(1e-4);
  });

  it('exports a GELU regressor whose ONNX graph gives the same values as predict()', async () => {
    const t = await createMlpTrainer(
      input(await fx.write('r.csv', toCsv(regression(300))), { ...REGRESS, steps: 60, activation: 'gelu' }),
    );
    open.push(t);
    for (let i = 0; i < 60; i++) await t.step();
    const files = await t.exportModel();
    const st = readSafetensors(file(files, 'model.safetensors'));
    expect(st.metadata.task).toBe('regress');
    expect(st.metadata.activation).toBe('gelu');
    expect(JSON.parse(st.metadata.target!).mean).toBeGreaterThan(10);
    expect(st.tensors['target.std']!.shape).toEqual([1]);

    const rows = probeRows(40);
    const expected = t.predict(rows).map((p) => (p as { value: number }).value);
    const got = await runOnnx(file(files, 'model.onnx'), rawInputs(t, rows), rows.length, 5);
    const maxDiff = Math.max(...expected.map((v, r) => Math.abs(v - got[r]!)));
    expect(maxDiff).toBeLessThanOrEqual(1e-4);
  });
});
