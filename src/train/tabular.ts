/**
 * Tables for the built-in tabular trainer: CSV (RFC 4180), JSON Lines and Parquet, chosen by the
 * plaintext file's extension, read whole into columns of numbers or strings.
 *
 * The three formats give the same table for the same data: a column is a number column when every
 * present value is a number, a string column when most values are strings (numbers in it become
 * their text), and an error naming the first offender when most values are numbers but one is not
 * ("train.csv line 17: column age: \"abc\" is not a number"): a typo in a numeric column must not
 * silently turn it into categories. Missing values (an empty CSV field, a JSON null or absent key, a
 * Parquet null) are kept as null; the trainer decides whether it can use them.
 *
 * Every refusal is a TabularError naming the file and, where there is one, the line (CSV, JSONL) or
 * row (Parquet) and the column.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as zlib from 'node:zlib';
import { type Compressors, parquetMetadata, parquetReadObjects, parquetSchema } from 'hyparquet';

export type TabularCode = 'unsupported-format' | 'unreadable' | 'bad-table' | 'unknown-column' | 'bad-value';

export class TabularError extends Error {
  override name = 'TabularError';
  constructor(
    readonly code: TabularCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export type TabularFormat = 'csv' | 'jsonl' | 'parquet';

export interface NumberColumn {
  name: string;
  type: 'number';
  values: (number | null)[];
}

export interface StringColumn {
  name: string;
  type: 'string';
  values: (string | null)[];
}

export type Column = NumberColumn | StringColumn;

export interface Table {
  /** The file's base name, as messages show it. */
  readonly file: string;
  readonly format: TabularFormat;
  /** Data rows (the CSV header is not one). */
  readonly rowCount: number;
  /** Columns in file order. */
  readonly columns: readonly Column[];
  /** The named column; TabularError 'unknown-column' listing the columns there are. */
  column(name: string): Column;
  /** Where data row `row` (0-based) came from: "line 17" (CSV, JSONL) or "row 17" (Parquet, 1-based). */
  where(row: number): string;
  /** An error about one value: "train.csv line 17: column age: <message>". */
  valueError(row: number, column: string, message: string): TabularError;
}

/** The format a file name asks for, or undefined. */
export function tabularFormat(file: string): TabularFormat | undefined {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.csv') return 'csv';
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  if (ext === '.parquet') return 'parquet';
  return undefined;
}

/** Reads a table from a plaintext file, the format chosen by its extension (.csv, .jsonl, .parquet). */
export async function readTable(file: string): Promise<Table> {
  const name = path.basename(file);
  const format = tabularFormat(file);
  if (format === undefined) {
    throw new TabularError(
      'unsupported-format',
      `${name}: unknown table format "${path.extname(file)}" (use .csv, .jsonl or .parquet)`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (e) {
    throw new TabularError('unreadable', `${name}: cannot read: ${(e as Error).message}`, { cause: e });
  }
  return parseTable(bytes, name, format);
}

/** Parses a table already in memory; `file` names it in messages. */
export async function parseTable(bytes: Uint8Array, file: string, format: TabularFormat): Promise<Table> {
  if (format === 'parquet') return parseParquet(bytes, file);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (e) {
    throw new TabularError('bad-table', `${file}: not UTF-8 text`, { cause: e });
  }
  return format === 'csv' ? parseCsv(text, file) : parseJsonl(text, file);
}

// --- building a table from raw cells -----------------------------------------------------------

/**
 * A cell as a format gives it: a number, a string (with, for CSV, its number if it reads as one),
 * or missing. Formats with types (JSON, Parquet) never read numbers out of strings.
 */
type Raw = { n: number; s?: string } | { s: string; n?: undefined } | null;

class Builder {
  private readonly cells: Raw[][];
  private readonly firstString: (number | undefined)[];
  private readonly counts: { num: number; str: number }[];
  private rows = 0;
  private readonly locations: number[] = [];

  constructor(
    private readonly file: string,
    private readonly format: TabularFormat,
    private readonly names: string[],
  ) {
    this.cells = names.map(() => []);
    this.firstString = names.map(() => undefined);
    this.counts = names.map(() => ({ num: 0, str: 0 }));
  }

  /** Appends a row; `location` is its line (CSV, JSONL) or 1-based row number (Parquet). */
  add(row: Raw[], location: number): void {
    for (const [c, cell] of row.entries()) {
      this.cells[c]!.push(cell);
      if (cell === null) continue;
      const count = this.counts[c]!;
      if (cell.n !== undefined) count.num++;
      else {
        count.str++;
        this.firstString[c] ??= this.rows;
      }
    }
    this.locations.push(location);
    this.rows++;
  }

  build(): Table {
    const { file, format, locations } = this;
    const unit = format === 'parquet' ? 'row' : 'line';
    const where = (row: number): string => `${unit} ${locations[row]}`;
    const valueError = (row: number, column: string, message: string): TabularError =>
      new TabularError('bad-value', `${file} ${where(row)}: column ${column}: ${message}`);
    if (this.rows === 0) {
      throw new TabularError(
        'bad-table',
        `${file}: no rows${format === 'csv' ? ' below the header' : ''} (a table needs at least one)`,
      );
    }
    const columns: Column[] = this.names.map((name, c) => {
      const cells = this.cells[c]!;
      const { num, str } = this.counts[c]!;
      if (str === 0) {
        return { name, type: 'number', values: cells.map((x) => (x === null ? null : x.n!)) };
      }
      if (num > str) {
        // Mostly numbers: one string is a typo or a unit ("12kg"), not a category.
        const row = this.firstString[c]!;
        throw valueError(row, name, `${quote((cells[row] as { s: string }).s)} is not a number`);
      }
      return {
        name,
        type: 'string',
        values: cells.map((x) => (x === null ? null : (x.s ?? String(x.n)))),
      };
    });
    const byName = new Map(columns.map((col) => [col.name, col]));
    return {
      file,
      format,
      rowCount: this.rows,
      columns,
      where,
      valueError,
      column(name: string): Column {
        const col = byName.get(name);
        if (col === undefined) {
          throw new TabularError(
            'unknown-column',
            `${file}: no column ${quote(name)} (columns: ${columns.map((x) => x.name).join(', ')})`,
          );
        }
        return col;
      },
    };
  }
}

/** A value for a message: JSON-quoted, cut at 40 characters. */
export function quote(s: string): string {
  return JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}…` : s);
}

// --- CSV ------------------------------------------------------------------------------------------

/** A decimal number as people and spreadsheets write it; no hex, no Infinity, no NaN. */
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function csvCell(text: string, quoted: boolean): Raw {
  if (!quoted && text === '') return null;
  const t = text.trim();
  if (NUMBER.test(t)) {
    const n = Number(t);
    if (Number.isFinite(n)) return { n, s: text };
  }
  return { s: text };
}

/**
 * RFC 4180 CSV: comma-separated fields, double quotes around fields that hold commas, quotes or line
 * breaks, `""` for a quote inside one; CRLF or LF line ends; a header row naming the columns. Blank
 * lines are skipped. An unquoted empty field is a missing value; a quoted one (`""`) is the empty
 * string.
 */
export function parseCsv(text: string, file: string): Table {
  const start = text.charCodeAt(0) === 0xfeff ? 1 : 0; // a byte-order mark is not part of the first name
  let i = start;
  let line = 1;
  const n = text.length;

  /** Reads one record; undefined at the end of the text. Fields keep whether they were quoted. */
  const record = (): { fields: { text: string; quoted: boolean }[]; line: number } | undefined => {
    // Skip blank lines.
    while (i < n && (text[i] === '\n' || text[i] === '\r')) {
      if (text[i] === '\n' || text[i + 1] !== '\n') line++;
      i++;
    }
    if (i >= n) return undefined;
    const at = line;
    const fields: { text: string; quoted: boolean }[] = [];
    for (;;) {
      if (text[i] === '"') {
        const open = line;
        i++;
        let value = '';
        for (;;) {
          const q = text.indexOf('"', i);
          if (q < 0)
            throw new TabularError('bad-table', `${file} line ${open}: a quoted field is never closed`);
          const chunk = text.slice(i, q);
          value += chunk;
          for (const ch of chunk) if (ch === '\n') line++;
          if (text[q + 1] === '"') {
            value += '"';
            i = q + 2;
            continue;
          }
          i = q + 1;
          break;
        }
        const next = text[i];
        if (i < n && next !== ',' && next !== '\n' && next !== '\r') {
          throw new TabularError(
            'bad-table',
            `${file} line ${line}: text after the closing quote of field ${fields.length + 1}`,
          );
        }
        fields.push({ text: value, quoted: true });
      } else {
        let j = i;
        while (j < n && text[j] !== ',' && text[j] !== '\n' && text[j] !== '\r') {
          if (text[j] === '"') {
            throw new TabularError(
              'bad-table',
              `${file} line ${line}: a quote inside unquoted field ${fields.length + 1} (quote the whole field and double the quote)`,
            );
          }
          j++;
        }
        fields.push({ text: text.slice(i, j), quoted: false });
        i = j;
      }
      if (i >= n) return { fields, line: at };
      if (text[i] === ',') {
        i++;
        continue;
      }
      // A line break ends the record: CRLF, LF, or a lone CR.
      i += text[i] === '\r' && text[i + 1] === '\n' ? 2 : 1;
      line++;
      return { fields, line: at };
    }
  };

  const header = record();
  if (header === undefined) throw new TabularError('bad-table', `${file}: empty (a header row is needed)`);
  const names = header.fields.map((f) => f.text);
  const seen = new Set<string>();
  for (const [k, name] of names.entries()) {
    if (name.trim() === '') {
      throw new TabularError(
        'bad-table',
        `${file} line ${header.line}: column ${k + 1} of the header has no name`,
      );
    }
    if (seen.has(name)) {
      throw new TabularError('bad-table', `${file} line ${header.line}: column ${quote(name)} appears twice`);
    }
    seen.add(name);
  }
  const table = new Builder(file, 'csv', names);
  for (let r = record(); r !== undefined; r = record()) {
    if (r.fields.length !== names.length) {
      throw new TabularError(
        'bad-table',
        `${file} line ${r.line}: ${r.fields.length} field${r.fields.length === 1 ? '' : 's'}, the header has ${names.length}`,
      );
    }
    table.add(
      r.fields.map((f) => csvCell(f.text, f.quoted)),
      r.line,
    );
  }
  return table.build();
}

// --- JSON Lines -----------------------------------------------------------------------------------

/** One JSON object per line; blank lines skipped. Columns in order of first appearance. */
export function parseJsonl(text: string, file: string): Table {
  const lines = text.split('\n');
  const names: string[] = [];
  const index = new Map<string, number>();
  const rows: { values: Map<number, Raw>; line: number }[] = [];
  for (const [k, raw] of lines.entries()) {
    const lineNo = k + 1;
    const src = k === 0 && raw.charCodeAt(0) === 0xfeff ? raw.slice(1) : raw;
    if (src.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(src);
    } catch (e) {
      throw new TabularError('bad-table', `${file} line ${lineNo}: not JSON (${(e as Error).message})`, {
        cause: e,
      });
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new TabularError('bad-table', `${file} line ${lineNo}: not a JSON object (one object per line)`);
    }
    const values = new Map<number, Raw>();
    for (const [name, x] of Object.entries(v)) {
      let c = index.get(name);
      if (c === undefined) {
        c = names.length;
        names.push(name);
        index.set(name, c);
      }
      values.set(
        c,
        typedCell(x, () => `${file} line ${lineNo}: column ${name}`),
      );
    }
    rows.push({ values, line: lineNo });
  }
  const table = new Builder(file, 'jsonl', names);
  for (const r of rows) {
    table.add(
      names.map((_, c) => r.values.get(c) ?? null),
      r.line,
    );
  }
  return table.build();
}

/** A cell from a typed format (JSON, Parquet): numbers stay numbers, strings stay strings. */
function typedCell(x: unknown, where: () => string): Raw {
  if (x === null || x === undefined) return null;
  if (typeof x === 'number') {
    if (!Number.isFinite(x)) throw new TabularError('bad-value', `${where()}: ${x} is not a finite number`);
    return { n: x };
  }
  // INT64 columns: precision beyond 2^53 is lost, which a feature or a label can afford.
  if (typeof x === 'bigint') return { n: Number(x) };
  if (typeof x === 'string') return { s: x };
  // Booleans are two categories, as the CSV text "true"/"false" would be.
  if (typeof x === 'boolean') return { s: String(x) };
  const what = x instanceof Date ? 'a date' : x instanceof Uint8Array ? 'binary data' : `a ${describe(x)}`;
  throw new TabularError('bad-value', `${where()}: ${what} is neither a number nor a string`);
}

function describe(x: unknown): string {
  if (Array.isArray(x)) return 'list';
  if (typeof x === 'object') return 'nested object';
  return typeof x;
}

// --- Parquet --------------------------------------------------------------------------------------

/**
 * Codecs beyond hyparquet's own (uncompressed, Snappy), from Node's zlib: GZIP and Brotli always,
 * ZSTD (polars' default) where this Node has it (22.15 and later). LZ4 and LZO remain unread.
 */
const COMPRESSORS: Compressors = (() => {
  const c: Compressors = {
    GZIP: (input) => zlib.gunzipSync(input),
    BROTLI: (input) => zlib.brotliDecompressSync(input),
  };
  const zstd = (zlib as unknown as Record<string, unknown>).zstdDecompressSync;
  if (typeof zstd === 'function') c.ZSTD = (input) => (zstd as (b: Uint8Array) => Uint8Array)(input);
  return c;
})();

/** All rows of a Parquet file's top-level columns (hyparquet, with the codecs above). */
export async function parseParquet(bytes: Uint8Array, file: string): Promise<Table> {
  // hyparquet reads from anything with byteLength and slice(); an exact ArrayBuffer is that.
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  let names: string[];
  let objects: Record<string, unknown>[];
  try {
    const metadata = parquetMetadata(buffer);
    names = parquetSchema(metadata).children.map((c) => c.element.name);
    objects = await parquetReadObjects({ file: buffer, metadata, compressors: COMPRESSORS });
  } catch (e) {
    throw new TabularError('bad-table', `${file}: not a readable Parquet file (${(e as Error).message})`, {
      cause: e,
    });
  }
  const table = new Builder(file, 'parquet', names);
  for (const [r, obj] of objects.entries()) {
    table.add(
      names.map((name) => typedCell(obj[name], () => `${file} row ${r + 1}: column ${name}`)),
      r + 1,
    );
  }
  return table.build();
}
