/**
 * A minimal Parquet writer for tests: one row group, one PLAIN-encoded uncompressed data page per
 * column, OPTIONAL columns (nulls allowed) of DOUBLE, INT64, UTF-8 strings or BOOLEAN. No Parquet
 * writer is installed here (no hyparquet-writer, parquet-wasm, DuckDB or pyarrow), so the tests make
 * their files with this; hyparquet, the reader under test, knows nothing of it.
 *
 * File: "PAR1" | column chunks | FileMetaData (Thrift compact protocol) | u32 LE length | "PAR1".
 * https://github.com/apache/parquet-format
 */
import { gzipSync } from 'node:zlib';

export type ParquetColumn =
  | { name: string; type: 'double'; values: (number | null)[] }
  | { name: string; type: 'int64'; values: (bigint | number | null)[] }
  | { name: string; type: 'string'; values: (string | null)[] }
  | { name: string; type: 'boolean'; values: (boolean | null)[] };

/** Thrift compact protocol, just what FileMetaData and PageHeader need. */
class Compact {
  private readonly out: number[] = [];
  private readonly last: number[] = [0];

  private varint(n: bigint): void {
    let v = n;
    while (v >= 0x80n) {
      this.out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.out.push(Number(v));
  }

  private zigzag(n: number | bigint): void {
    const v = BigInt(n);
    this.varint(v >= 0n ? v << 1n : (-v << 1n) - 1n);
  }

  private field(id: number, type: number): void {
    const delta = id - this.last[this.last.length - 1]!;
    if (delta > 0 && delta <= 15) this.out.push((delta << 4) | type);
    else {
      this.out.push(type);
      this.zigzag(id);
    }
    this.last[this.last.length - 1] = id;
  }

  i32(id: number, v: number): this {
    this.field(id, 5);
    this.zigzag(v);
    return this;
  }

  i64(id: number, v: number | bigint): this {
    this.field(id, 6);
    this.zigzag(v);
    return this;
  }

  binary(id: number, b: Uint8Array | string): this {
    const bytes = typeof b === 'string' ? new TextEncoder().encode(b) : b;
    this.field(id, 8);
    this.varint(BigInt(bytes.length));
    this.out.push(...bytes);
    return this;
  }

  struct(id: number, body: (c: this) => void): this {
    this.field(id, 12);
    this.last.push(0);
    body(this);
    this.out.push(0);
    this.last.pop();
    return this;
  }

  /** A list of structs (type 12), i32s (5) or strings (8). */
  list<T>(id: number, elemType: 5 | 8 | 12, items: T[], write: (c: this, item: T) => void): this {
    this.field(id, 9);
    if (items.length < 15) this.out.push((items.length << 4) | elemType);
    else {
      this.out.push(0xf0 | elemType);
      this.varint(BigInt(items.length));
    }
    for (const item of items) {
      if (elemType === 12) {
        this.last.push(0);
        write(this, item);
        this.out.push(0);
        this.last.pop();
      } else write(this, item);
    }
    return this;
  }

  /** A bare list element (no field header). */
  elemI32(v: number): void {
    this.zigzag(v);
  }

  elemString(s: string): void {
    const bytes = new TextEncoder().encode(s);
    this.varint(BigInt(bytes.length));
    this.out.push(...bytes);
  }

  /** Ends a top-level struct. */
  bytes(): Uint8Array {
    return Uint8Array.from([...this.out, 0]);
  }
}

const TYPE = { boolean: 0, int64: 2, double: 5, string: 6 } as const;

/** Definition levels (bit width 1) as one bit-packed run of the RLE/bit-packing hybrid, length-prefixed. */
function definitionLevels(present: boolean[]): Uint8Array {
  const groups = Math.ceil(present.length / 8);
  const body: number[] = [];
  // Run header, a ULEB128 varint: (groups << 1) | 1 for a bit-packed run.
  for (let h = groups * 2 + 1; ; h = Math.floor(h / 128)) {
    if (h < 128) {
      body.push(h);
      break;
    }
    body.push((h % 128) | 0x80);
  }
  for (let g = 0; g < groups; g++) {
    let b = 0;
    for (let k = 0; k < 8; k++) if (present[g * 8 + k]) b |= 1 << k;
    body.push(b);
  }
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, 4);
  return out;
}

function plainValues(col: ParquetColumn): Uint8Array {
  const parts: number[] = [];
  const present = col.values.filter((v) => v !== null);
  if (col.type === 'boolean') {
    const bytes = new Uint8Array(Math.ceil(present.length / 8));
    for (const [i, v] of (present as boolean[]).entries()) if (v) bytes[i >> 3]! |= 1 << (i & 7);
    return bytes;
  }
  for (const v of present) {
    if (col.type === 'string') {
      const b = new TextEncoder().encode(v as string);
      const len = new Uint8Array(4);
      new DataView(len.buffer).setUint32(0, b.length, true);
      parts.push(...len, ...b);
    } else {
      const b = new Uint8Array(8);
      const view = new DataView(b.buffer);
      if (col.type === 'double') view.setFloat64(0, v as number, true);
      else view.setBigInt64(0, BigInt(v as number | bigint), true);
      parts.push(...b);
    }
  }
  return Uint8Array.from(parts);
}

/** @param codec "gzip" compresses each page (with node:zlib), as Spark and pandas can be told to. */
export function writeParquet(columns: ParquetColumn[], codec: 'none' | 'gzip' = 'none'): Uint8Array {
  const rows = columns[0]?.values.length ?? 0;
  const chunks: Uint8Array[] = [new TextEncoder().encode('PAR1')];
  let offset = 4;
  const meta: { col: ParquetColumn; offset: number; size: number; grown: number }[] = [];
  for (const col of columns) {
    const raw = new Uint8Array([...definitionLevels(col.values.map((v) => v !== null)), ...plainValues(col)]);
    const page = codec === 'gzip' ? new Uint8Array(gzipSync(raw)) : raw;
    const header = new Compact()
      .i32(1, 0) // DATA_PAGE
      .i32(2, raw.length)
      .i32(3, page.length)
      .struct(5, (c) => c.i32(1, rows).i32(2, 0).i32(3, 3).i32(4, 3)) // PLAIN values, RLE levels
      .bytes();
    meta.push({ col, offset, size: header.length + page.length, grown: raw.length - page.length });
    chunks.push(header, page);
    offset += header.length + page.length;
  }
  const footer = new Compact()
    .i32(1, 1)
    .list(2, 12, [undefined, ...columns], (c, col) => {
      if (col === undefined) c.binary(4, 'schema').i32(5, columns.length);
      else {
        c.i32(1, TYPE[col.type]).i32(3, 1).binary(4, col.name); // OPTIONAL
        if (col.type === 'string') c.i32(6, 0); // converted_type UTF8
      }
    })
    .i64(3, rows)
    .list(4, 12, [0], (c) => {
      c.list(1, 12, meta, (cc, m) => {
        cc.i64(2, m.offset).struct(3, (md) => {
          md.i32(1, TYPE[m.col.type])
            .list(2, 5, [0, 3], (x, e) => x.elemI32(e))
            .list(3, 8, [m.col.name], (x, s) => x.elemString(s))
            .i32(4, codec === 'gzip' ? 2 : 0) // GZIP or UNCOMPRESSED
            .i64(5, rows)
            .i64(6, m.size + m.grown)
            .i64(7, m.size)
            .i64(9, m.offset);
        });
      })
        .i64(2, offset - 4)
        .i64(3, rows);
    })
    .binary(6, 'cloister test writer')
    .bytes();
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, footer.length, true);
  chunks.push(footer, len, new TextEncoder().encode('PAR1'));
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}
