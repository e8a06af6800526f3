import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  parseCsv,
  parseJsonl,
  parseTable,
  readTable,
  type Table,
  TabularError,
} from '../../src/train/tabular.js';
import { writeParquet } from './parquet-writer.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'cloister-tabular-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The same four rows in each format: numbers, strings with commas/quotes/newlines, a missing value. */
const CSV =
  'age,city,score,ok\r\n' +
  '31,"Paris, FR",1.5,true\r\n' +
  '45,"say ""hi""",-2e3,false\r\n' +
  '27,"two\r\nlines",,true\r\n' +
  '52,Oslo,0.25,false\r\n';

const JSONL = [
  { age: 31, city: 'Paris, FR', score: 1.5, ok: true },
  { age: 45, city: 'say "hi"', score: -2000, ok: false },
  { age: 27, city: 'two\r\nlines', score: null, ok: true },
  { age: 52, city: 'Oslo', score: 0.25, ok: false },
]
  .map((o) => JSON.stringify(o))
  .join('\n');

const PARQUET = writeParquet([
  { name: 'age', type: 'int64', values: [31n, 45n, 27n, 52n] },
  { name: 'city', type: 'string', values: ['Paris, FR', 'say "hi"', 'two\r\nlines', 'Oslo'] },
  { name: 'score', type: 'double', values: [1.5, -2000, null, 0.25] },
  { name: 'ok', type: 'boolean', values: [true, false, true, false] },
]);

function plain(t: Table) {
  return t.columns.map((c) => ({ name: c.name, type: c.type, values: c.values }));
}

async function write(name: string, content: string | Uint8Array): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, content);
  return file;
}

function refusal(f: () => unknown): TabularError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TabularError);
    return e as TabularError;
  }
  throw new Error('expected a TabularError');
}

describe('readTable', () => {
  it('reads the same rows from CSV, JSON Lines and Parquet', async () => {
    const csv = await readTable(await write('t.csv', CSV));
    const jsonl = await readTable(await write('t.jsonl', JSONL));
    const parquet = await readTable(await write('t.parquet', PARQUET));
    const expected = [
      { name: 'age', type: 'number', values: [31, 45, 27, 52] },
      { name: 'city', type: 'string', values: ['Paris, FR', 'say "hi"', 'two\r\nlines', 'Oslo'] },
      { name: 'score', type: 'number', values: [1.5, -2000, null, 0.25] },
      { name: 'ok', type: 'string', values: ['true', 'false', 'true', 'false'] },
    ];
    expect(plain(csv)).toEqual(expected);
    expect(plain(jsonl)).toEqual(expected);
    expect(plain(parquet)).toEqual(expected);
    expect([csv.format, jsonl.format, parquet.format]).toEqual(['csv', 'jsonl', 'parquet']);
    expect(csv.rowCount).toBe(4);
    // Where rows came from: the CSV record with a line break inside quotes spans lines 4–5.
    expect([0, 1, 2, 3].map((r) => csv.where(r))).toEqual(['line 2', 'line 3', 'line 4', 'line 6']);
    expect(jsonl.where(3)).toBe('line 4');
    expect(parquet.where(3)).toBe('row 4');
  });

  it('refuses an unknown extension and a missing file', async () => {
    await expect(readTable(path.join(dir, 'x.xlsx'))).rejects.toMatchObject({
      code: 'unsupported-format',
      message: expect.stringContaining('x.xlsx: unknown table format ".xlsx"'),
    });
    await expect(readTable(path.join(dir, 'absent.csv'))).rejects.toMatchObject({
      code: 'unreadable',
      message: expect.stringContaining('absent.csv: cannot read'),
    });
  });
});

describe('CSV', () => {
  it('accepts LF line ends, a BOM, blank lines, no final newline, and quoted empty strings', () => {
    const t = parseCsv('\ufeffa,b\n1,""\n\n2,x', 'f.csv');
    expect(plain(t)).toEqual([
      { name: 'a', type: 'number', values: [1, 2] },
      { name: 'b', type: 'string', values: ['', 'x'] },
    ]);
    expect(t.where(1)).toBe('line 4');
  });

  it('keeps the text of numbers in a string column', () => {
    const t = parseCsv('zip\n007\nN1\nSW1\n', 'f.csv');
    expect(t.column('zip').values).toEqual(['007', 'N1', 'SW1']);
  });

  it('names the line and column of a non-number in a numeric column', () => {
    const rows = Array.from({ length: 20 }, (_, i) => `${i},${20 + i}`);
    rows[15] = '15,abc';
    const e = refusal(() => parseCsv(`id,age\n${rows.join('\n')}\n`, 'train.csv'));
    expect(e.code).toBe('bad-value');
    expect(e.message).toBe('train.csv line 17: column age: "abc" is not a number');
  });

  it.each([
    ['', 'train.csv: empty (a header row is needed)'],
    ['a,b\n', 'train.csv: no rows below the header (a table needs at least one)'],
    ['a,b\n1,2\n3\n', 'train.csv line 3: 1 field, the header has 2'],
    ['a,b\n1,"2\n', 'train.csv line 2: a quoted field is never closed'],
    ['a,b\n1,"2"x\n', 'train.csv line 2: text after the closing quote of field 2'],
    ['a,b\n1,2"\n', 'train.csv line 2: a quote inside unquoted field 2'],
    ['a,a\n1,2\n', 'train.csv line 1: column "a" appears twice'],
    ['a,\n1,2\n', 'train.csv line 1: column 2 of the header has no name'],
  ])('refuses a malformed table %j', (text, message) => {
    const e = refusal(() => parseCsv(text, 'train.csv'));
    expect(e.code).toBe('bad-table');
    expect(e.message).toContain(message);
  });
});

describe('JSON Lines', () => {
  it('takes columns in order of first appearance; absent keys are missing values', () => {
    const t = parseJsonl('{"a":1}\n\n{"b":"x","a":2}\n', 'f.jsonl');
    expect(plain(t)).toEqual([
      { name: 'a', type: 'number', values: [1, 2] },
      { name: 'b', type: 'string', values: [null, 'x'] },
    ]);
    expect(t.where(1)).toBe('line 3');
  });

  it.each([
    ['{"a":1}\n[1]\n', 'bad-table', 'f.jsonl line 2: not a JSON object'],
    ['{"a":1}\n{"a":\n', 'bad-table', 'f.jsonl line 2: not JSON'],
    [
      '{"a":{"b":1}}\n',
      'bad-value',
      'f.jsonl line 1: column a: a nested object is neither a number nor a string',
    ],
    ['{"a":1}\n{"a":2}\n{"a":"three"}\n', 'bad-value', 'f.jsonl line 3: column a: "three" is not a number'],
    ['\n\n', 'bad-table', 'f.jsonl: no rows'],
  ])('refuses %j', (text, code, message) => {
    const e = refusal(() => parseJsonl(text, 'f.jsonl'));
    expect(e.code).toBe(code);
    expect(e.message).toContain(message);
  });
});

describe('Parquet', () => {
  it('names the row of a bad value and refuses a file that is not Parquet', async () => {
    const bytes = writeParquet([
      { name: 'x', type: 'double', values: [1, 2, 3] },
      { name: 'y', type: 'string', values: ['a', 'b', 'c'] },
    ]);
    const t = await parseTable(bytes, 'd.parquet', 'parquet');
    expect(t.column('x').values).toEqual([1, 2, 3]);
    await expect(
      parseTable(new TextEncoder().encode('a,b\n1,2\n'), 'd.parquet', 'parquet'),
    ).rejects.toMatchObject({
      code: 'bad-table',
      message: expect.stringContaining('d.parquet: not a readable Parquet file'),
    });
    expect(t.valueError(1, 'x', 'missing value').message).toBe('d.parquet row 2: column x: missing value');
  });

  it('reads GZIP-compressed pages', async () => {
    const bytes = writeParquet(
      [
        { name: 'x', type: 'double', values: [1, null, 3] },
        { name: 'y', type: 'string', values: ['a', 'b', 'c'] },
      ],
      'gzip',
    );
    const t = await parseTable(bytes, 'z.parquet', 'parquet');
    expect(plain(t)).toEqual([
      { name: 'x', type: 'number', values: [1, null, 3] },
      { name: 'y', type: 'string', values: ['a', 'b', 'c'] },
    ]);
  });

  it('refuses an unknown column, listing the columns there are', () => {
    const t = parseCsv('a,b\n1,2\n', 'f.csv');
    const e = refusal(() => t.column('c'));
    expect(e.code).toBe('unknown-column');
    expect(e.message).toBe('f.csv: no column "c" (columns: a, b)');
  });
});
