/**
 * Synthetic tables for the MLP trainer's tests, written to a temporary folder: a separable
 * three-class problem that needs both a numeric boundary and a category, and a regression with a
 * known linear target. Deterministic (a small LCG), so the tests see the same rows every run.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TrainerInput } from '../../src/train/trainer.js';

export interface Fixture {
  dir: string;
  write(name: string, content: string | Uint8Array): Promise<string>;
  cleanup(): Promise<void>;
}

export async function fixtureDir(): Promise<Fixture> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cloister-mlp-'));
  return {
    dir,
    async write(name, content) {
      const file = path.join(dir, name);
      await writeFile(file, content);
      return file;
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const COLOURS = ['red', 'green', 'blue'] as const;

export interface Rows {
  header: string[];
  rows: (number | string)[][];
}

/**
 * Class "c" when the colour is blue; otherwise "a" above the line x1/50 − 1 + x2 = 0 and "b" below.
 * x1 spans 0…100 and x2 −1…1, so without standardisation the scales would differ by 50×.
 */
export function classification(n: number, seed = 1): Rows {
  const r = lcg(seed);
  const rows: (number | string)[][] = [];
  for (let i = 0; i < n; i++) {
    const x1 = Math.round(r() * 10000) / 100;
    const x2 = Math.round((r() * 2 - 1) * 1000) / 1000;
    const colour = COLOURS[Math.floor(r() * 3)]!;
    const label = colour === 'blue' ? 'c' : x1 / 50 - 1 + x2 > 0 ? 'a' : 'b';
    rows.push([x1, x2, colour, label]);
  }
  return { header: ['x1', 'x2', 'colour', 'label'], rows };
}

/** y = 3·x1/100 − 2·x2 + 1.5·[red] + 10, plus a little noise. */
export function regression(n: number, seed = 2): Rows {
  const r = lcg(seed);
  const rows: (number | string)[][] = [];
  for (let i = 0; i < n; i++) {
    const x1 = Math.round(r() * 10000) / 100;
    const x2 = Math.round((r() * 2 - 1) * 1000) / 1000;
    const colour = COLOURS[Math.floor(r() * 3)]!;
    const y = (3 * x1) / 100 - 2 * x2 + (colour === 'red' ? 1.5 : 0) + 10 + (r() - 0.5) * 0.05;
    rows.push([x1, x2, colour, Math.round(y * 10000) / 10000]);
  }
  return { header: ['x1', 'x2', 'colour', 'y'], rows };
}

export function toCsv(t: Rows): string {
  return [t.header.join(','), ...t.rows.map((r) => r.join(','))].join('\n') + '\n';
}

export function toJsonl(t: Rows): string {
  return (
    t.rows.map((r) => JSON.stringify(Object.fromEntries(t.header.map((h, i) => [h, r[i]])))).join('\n') + '\n'
  );
}

export function input(file: string, hyperparameters: Record<string, unknown>, seed = 7): TrainerInput {
  return { inputs: [{ name: path.basename(file), path: file }], hyperparameters, seed };
}

export const CLASSIFY = {
  steps: 300,
  batch: 32,
  lr: 0.01,
  hidden: [16],
  task: 'classify',
  label: 'label',
} as const;

export const REGRESS = {
  steps: 300,
  batch: 32,
  lr: 0.01,
  hidden: [16],
  task: 'regress',
  label: 'y',
} as const;
