/**
 * From a table to the model's input matrix: the held-out split, standardisation of numeric columns
 * and one-hot vocabularies of string columns (both learnt from the training split only, so nothing of
 * the held-out rows leaks into the model), and the label as a class index (classify) or a
 * standardised number (regress). The layout is stored with the model (safetensors metadata, ONNX
 * metadata) so that inputs are encoded the same way at serving time.
 *
 * Values are standardised in float32 in the order an ONNX graph does it, `(f32(x) − mean) / std`,
 * so the exported graph and this code give bit-identical inputs.
 */
import { type Column, quote, type Table } from '../tabular.js';
import { MlpError } from './errors.js';
import type { MlpHyperparameters, Task } from './hyperparameters.js';
import { permutation, Rng } from './rng.js';

export type FeatureSpec =
  | { name: string; kind: 'number'; mean: number; std: number }
  | { name: string; kind: 'category'; values: string[] };

export interface Layout {
  features: FeatureSpec[];
  /** One name per input column: "age", "colour=red", … */
  inputs: string[];
  /** Per input column (0 and 1 for one-hot columns); float32 values. */
  mean: Float32Array;
  std: Float32Array;
  task: Task;
  label: string;
  /** classify: the class names, sorted (numerically for a numeric label); output i is classes[i]. */
  classes?: string[];
  /** regress: the target's standardisation; the model predicts (y − mean) / std. */
  target?: { mean: number; std: number };
}

/** Most distinct values a string feature may one-hot into, or a label may have as classes. */
export const MAX_CATEGORIES = 1000;

/** Splits rows 0…n-1 into training and held-out rows, the same for the same seed. */
export function splitRows(
  n: number,
  heldOut: number,
  seed: number,
): { train: Uint32Array; held: Uint32Array } {
  const nHeld = Math.max(1, Math.round(n * heldOut));
  if (n - nHeld < 1) {
    throw new MlpError(
      'bad-hyperparameter',
      `hyperparameters.heldOut: holding out ${nHeld} of ${n} row${n === 1 ? '' : 's'} leaves none to train on`,
    );
  }
  const p = permutation(n, new Rng(seed, 'split'));
  // Sorted, so a row's place in a batch does not depend on where the permutation put it.
  return { held: p.slice(0, nHeld).sort(), train: p.slice(nHeld).sort() };
}

function fround(x: number): number {
  return Math.fround(x);
}

/** Mean and population standard deviation as float32; a constant column gets std 1. */
function moments(values: readonly number[]): { mean: number; std: number } {
  const n = values.length;
  let sum = 0;
  for (const v of values) sum += v;
  const mean = sum / n;
  let sq = 0;
  for (const v of values) sq += (v - mean) ** 2;
  const std = Math.sqrt(sq / n);
  return { mean: fround(mean), std: std > 1e-12 && fround(std) > 0 ? fround(std) : 1 };
}

function pick<T>(values: readonly T[], rows: Uint32Array): T[] {
  return Array.from(rows, (r) => values[r]!);
}

/** Compares numbers numerically and strings by code unit: the same order everywhere. */
function order(a: string | number, b: string | number): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Checks that every value of `col` at `rows` is present; names the first missing one. */
function present(table: Table, col: Column, rows: Uint32Array, role: string): void {
  for (const r of rows) {
    if (col.values[r] === null)
      throw table.valueError(r, col.name, `missing value (every ${role} value is needed)`);
  }
}

/** Learns the layout from the training rows. */
export function fitLayout(table: Table, hp: MlpHyperparameters, train: Uint32Array): Layout {
  const names = table.columns.map((c) => c.name);
  if (!names.includes(hp.label)) {
    throw new MlpError(
      'bad-hyperparameter',
      `hyperparameters.label: ${table.file} has no column ${quote(hp.label)} (columns: ${names.join(', ')})`,
    );
  }
  for (const f of hp.features ?? []) {
    if (!names.includes(f)) {
      throw new MlpError(
        'bad-hyperparameter',
        `hyperparameters.features: ${table.file} has no column ${quote(f)} (columns: ${names.join(', ')})`,
      );
    }
  }
  const featureNames = hp.features ?? names.filter((n) => n !== hp.label);
  if (featureNames.length === 0) {
    throw new MlpError('bad-input', `${table.file}: no feature columns besides the label ${quote(hp.label)}`);
  }

  const all = Uint32Array.from({ length: table.rowCount }, (_, i) => i);
  const features: FeatureSpec[] = [];
  const inputs: string[] = [];
  const mean: number[] = [];
  const std: number[] = [];
  for (const name of featureNames) {
    const col = table.column(name);
    present(table, col, all, 'feature');
    if (col.type === 'number') {
      const m = moments(pick(col.values as number[], train));
      features.push({ name, kind: 'number', ...m });
      inputs.push(name);
      mean.push(m.mean);
      std.push(m.std);
    } else {
      const values = [...new Set(pick(col.values as string[], train))].sort(order);
      if (values.length > MAX_CATEGORIES) {
        throw new MlpError(
          'bad-hyperparameter',
          `hyperparameters.features: column ${quote(name)} has ${values.length} distinct values in the training rows, too many to one-hot (at most ${MAX_CATEGORIES}); leave it out of hyperparameters.features`,
        );
      }
      features.push({ name, kind: 'category', values });
      for (const v of values) {
        inputs.push(`${name}=${v}`);
        mean.push(0);
        std.push(1);
      }
    }
  }

  const layout: Layout = {
    features,
    inputs,
    mean: Float32Array.from(mean),
    std: Float32Array.from(std),
    task: hp.task,
    label: hp.label,
  };
  const label = table.column(hp.label);
  present(table, label, all, 'label');
  if (hp.task === 'classify') {
    // Classes from every row: a class seen only in the held-out rows is still a class.
    const distinct = [...new Set<string | number>(label.values as (string | number)[])].sort(order);
    if (distinct.length < 2) {
      throw new MlpError(
        'bad-input',
        `${table.file}: column ${hp.label}: ${distinct.length} distinct value${distinct.length === 1 ? '' : 's'}; classify needs at least 2 classes`,
      );
    }
    if (distinct.length > MAX_CATEGORIES) {
      throw new MlpError(
        'bad-hyperparameter',
        `hyperparameters.task: column ${quote(hp.label)} has ${distinct.length} distinct values, too many classes (at most ${MAX_CATEGORIES}); is it a "regress" label?`,
      );
    }
    layout.classes = distinct.map(String);
  } else {
    if (label.type !== 'number') {
      const r = label.values.findIndex((v) => v !== null);
      throw table.valueError(
        r,
        hp.label,
        `${quote(label.values[r]!)} is not a number (task "regress" needs a numeric label)`,
      );
    }
    layout.target = moments(pick(label.values as number[], train));
  }
  return layout;
}

export interface Encoded {
  /** rows × inputs, standardised. */
  x: Float32Array;
  /** classify: class index per row; regress: standardised target per row. */
  y: Float32Array;
  rows: number;
}

/** Encodes one standardised numeric value as the ONNX graph will: f32 subtract, then f32 divide. */
function standardise(v: number, mean: number, std: number): number {
  return fround(fround(fround(v) - mean) / std);
}

/** Encodes the given rows of the table (features and label). */
export function encodeTable(table: Table, layout: Layout, rows: Uint32Array): Encoded {
  const width = layout.inputs.length;
  const x = new Float32Array(rows.length * width);
  let offset = 0;
  for (const spec of layout.features) {
    const values = table.column(spec.name).values;
    if (spec.kind === 'number') {
      for (const [i, r] of rows.entries())
        x[i * width + offset] = standardise(values[r] as number, spec.mean, spec.std);
      offset++;
    } else {
      const index = new Map(spec.values.map((v, k) => [v, k]));
      for (const [i, r] of rows.entries()) {
        const k = index.get(values[r] as string);
        if (k !== undefined) x[i * width + offset + k] = 1; // unseen in training: all zeros
      }
      offset += spec.values.length;
    }
  }
  const label = table.column(layout.label).values;
  const y = new Float32Array(rows.length);
  if (layout.classes !== undefined) {
    const index = new Map(layout.classes.map((c, k) => [c, k]));
    for (const [i, r] of rows.entries()) y[i] = index.get(String(label[r]))!;
  } else {
    const t = layout.target!;
    for (const [i, r] of rows.entries()) y[i] = standardise(label[r] as number, t.mean, t.std);
  }
  return { x, y, rows: rows.length };
}

/** A row for prediction: feature name → value (numbers for numeric features, strings or numbers for categories). */
export type Row = Record<string, unknown>;

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Encodes rows given as objects (prediction); names the row and feature of a bad value. */
export function encodeRows(rows: readonly Row[], layout: Layout): Float32Array {
  const width = layout.inputs.length;
  const x = new Float32Array(rows.length * width);
  for (const [i, row] of rows.entries()) {
    let offset = 0;
    for (const spec of layout.features) {
      const v = row[spec.name];
      const where = `row ${i + 1}: feature ${spec.name}`;
      if (spec.kind === 'number') {
        const n =
          typeof v === 'number' ? v : typeof v === 'string' && NUMBER.test(v.trim()) ? Number(v) : Number.NaN;
        if (!Number.isFinite(n)) throw new MlpError('bad-input', `${where}: ${show(v)} is not a number`);
        x[i * width + offset] = standardise(n, spec.mean, spec.std);
        offset++;
      } else {
        if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') {
          throw new MlpError('bad-input', `${where}: ${show(v)} is not a category (a string)`);
        }
        const k = spec.values.indexOf(String(v));
        if (k >= 0) x[i * width + offset + k] = 1;
        offset += spec.values.length;
      }
    }
  }
  return x;
}

function show(v: unknown): string {
  return v === undefined
    ? 'missing value'
    : typeof v === 'string'
      ? quote(v)
      : (JSON.stringify(v) ?? String(v));
}
