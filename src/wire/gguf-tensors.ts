/**
 * GGUF v3 writing, and reading tensor data as float32: what the trainers write (models, LoRA
 * adapters), what the fine-tuner reads from a base model, and what tests write. Web-standard: bytes in
 * and out. The header reader is gguf.ts.
 *
 * Tensors are given and returned in ggml's order: `dims` is ggml's `ne`, fastest-varying first, so a
 * matrix with `ne = [cols, rows]` is `rows` rows of `cols` values.
 */
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufError, type GgufInfo, GgufValueType } from './gguf.js';

const GGUF_VERSION = 3;

/** ggml type ids this module reads or writes. */
export const GgmlType = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30 } as const;

/** A metadata value with its GGUF type (JavaScript numbers alone do not say u32 or f32). */
export type GgufMetaValue =
  | { type: 'u32' | 'i32' | 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'f32[]' | 'i32[]'; value: readonly number[] };

export interface GgufTensorOut {
  name: string;
  /** ggml's `ne`, fastest-varying first. */
  dims: readonly number[];
  /** Stored as F32 or F16 (rounded to nearest even). */
  type: 'F32' | 'F16';
  /** The values in ggml order (row after row of `dims[0]` values). */
  data: Float32Array;
}

const enc = new TextEncoder();

class Out {
  private parts: Uint8Array[] = [];
  length = 0;

  bytes(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.length;
  }
  private num(n: number, set: (d: DataView) => void): void {
    const b = new Uint8Array(n);
    set(new DataView(b.buffer));
    this.bytes(b);
  }
  u32(v: number): void {
    this.num(4, (d) => d.setUint32(0, v, true));
  }
  i32(v: number): void {
    this.num(4, (d) => d.setInt32(0, v, true));
  }
  u64(v: number): void {
    this.num(8, (d) => d.setBigUint64(0, BigInt(v), true));
  }
  f32(v: number): void {
    this.num(4, (d) => d.setFloat32(0, v, true));
  }
  str(s: string): void {
    const b = enc.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    if (n > 0) this.bytes(new Uint8Array(n));
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

function writeValue(o: Out, v: GgufMetaValue): void {
  const T = GgufValueType;
  switch (v.type) {
    case 'u32':
      o.u32(T.UINT32);
      o.u32(v.value);
      return;
    case 'i32':
      o.u32(T.INT32);
      o.i32(v.value);
      return;
    case 'f32':
      o.u32(T.FLOAT32);
      o.f32(v.value);
      return;
    case 'bool':
      o.u32(T.BOOL);
      o.bytes(Uint8Array.of(v.value ? 1 : 0));
      return;
    case 'string':
      o.u32(T.STRING);
      o.str(v.value);
      return;
    case 'string[]':
      o.u32(T.ARRAY);
      o.u32(T.STRING);
      o.u64(v.value.length);
      for (const s of v.value) o.str(s);
      return;
    case 'f32[]':
    case 'i32[]':
      o.u32(T.ARRAY);
      o.u32(v.type === 'f32[]' ? T.FLOAT32 : T.INT32);
      o.u64(v.value.length);
      for (const n of v.value) {
        if (v.type === 'f32[]') o.f32(n);
        else o.i32(n);
      }
      return;
  }
}

/** A whole GGUF v3 file: the metadata in the order given, then the tensors, each aligned. */
export function writeGguf(
  metadata: readonly (readonly [string, GgufMetaValue])[],
  tensors: readonly GgufTensorOut[],
): Uint8Array {
  const alignEntry = metadata.find(([k]) => k === 'general.alignment');
  const alignment = alignEntry ? (alignEntry[1].value as number) : GGUF_DEFAULT_ALIGNMENT;
  const o = new Out();
  o.u32(GGUF_MAGIC);
  o.u32(GGUF_VERSION);
  o.u64(tensors.length);
  o.u64(metadata.length);
  for (const [key, value] of metadata) {
    o.str(key);
    writeValue(o, value);
  }
  const data: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const count = t.dims.reduce((a, b) => a * b, 1);
    if (t.data.length !== count)
      throw new RangeError(
        `writeGguf: ${t.name} has ${t.data.length} values, its dims [${t.dims}] need ${count}`,
      );
    o.str(t.name);
    o.u32(t.dims.length);
    for (const d of t.dims) o.u64(d);
    o.u32(t.type === 'F16' ? GgmlType.F16 : GgmlType.F32);
    o.u64(offset);
    const bytes = encodeTensor(t.data, t.type);
    data.push(bytes);
    const padded = Math.ceil(bytes.length / alignment) * alignment;
    if (padded > bytes.length) data.push(new Uint8Array(padded - bytes.length));
    offset += padded;
  }
  o.pad(alignment);
  for (const d of data) o.bytes(d);
  return o.finish();
}

function encodeTensor(values: Float32Array, type: 'F32' | 'F16'): Uint8Array {
  if (type === 'F32') {
    const b = new Uint8Array(values.length * 4);
    const d = new DataView(b.buffer);
    for (let i = 0; i < values.length; i++) d.setFloat32(i * 4, values[i]!, true);
    return b;
  }
  const b = new Uint8Array(values.length * 2);
  const d = new DataView(b.buffer);
  for (let i = 0; i < values.length; i++) d.setUint16(i * 2, floatToHalf(values[i]!), true);
  return b;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** IEEE binary16 bits of a float, rounded to nearest even (overflow to infinity, subnormals kept). */
export function floatToHalf(f: number): number {
  f32Scratch[0] = f;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

/** The float an IEEE binary16 bit pattern stands for. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Infinity : Number.NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** The types `readTensorF32` turns into float32: the float types and the two simplest quantisations. */
export const READABLE_TYPES: ReadonlyMap<number, string> = new Map([
  [GgmlType.F32, 'F32'],
  [GgmlType.F16, 'F16'],
  [GgmlType.BF16, 'BF16'],
  [GgmlType.Q8_0, 'Q8_0'],
  [GgmlType.Q4_0, 'Q4_0'],
]);

/**
 * One tensor's values as float32, in ggml order, from the whole file's bytes and its parsed header.
 * F32, F16 and BF16 are exact; Q8_0 and Q4_0 are dequantised as ggml does (value = scale × q, with
 * q − 8 for Q4_0, whose block holds the low nibbles as elements 0–15 and the high ones as 16–31).
 * Other types are refused (`unsupported`).
 */
export function readTensorF32(bytes: Uint8Array, info: GgufInfo, name: string): Float32Array {
  const t = info.tensors.find((x) => x.name === name);
  if (!t) throw new GgufError('malformed', `GGUF has no tensor ${name}`);
  const start = info.dataOffset + t.offset;
  if (start + t.byteLength > bytes.length)
    throw new GgufError('truncated', `GGUF file truncated in tensor ${name}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset + start, t.byteLength);
  const n = t.dims.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  switch (t.ggmlType) {
    case GgmlType.F32:
      for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
      return out;
    case GgmlType.F16:
      for (let i = 0; i < n; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
      return out;
    case GgmlType.BF16: {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = view.getUint16(i * 2, true) << 16;
      return out;
    }
    case GgmlType.Q8_0:
      for (let b = 0; b < n / 32; b++) {
        const d = halfToFloat(view.getUint16(b * 34, true));
        for (let j = 0; j < 32; j++) out[b * 32 + j] = d * view.getInt8(b * 34 + 2 + j);
      }
      return out;
    case GgmlType.Q4_0:
      for (let b = 0; b < n / 32; b++) {
        const d = halfToFloat(view.getUint16(b * 18, true));
        for (let j = 0; j < 16; j++) {
          const q = view.getUint8(b * 18 + 2 + j);
          out[b * 32 + j] = d * ((q & 0x0f) - 8);
          out[b * 32 + j + 16] = d * ((q >> 4) - 8);
        }
      }
      return out;
    default:
      throw new GgufError(
        'unsupported',
        `GGUF tensor ${name} has ggml type ${t.ggmlType}; readable here: ${[...READABLE_TYPES.values()].join(', ')}`,
      );
  }
}
