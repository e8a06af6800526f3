/**
 * GGUF v3 (the llama.cpp model format): a header reader that lets the engine refuse a malformed or
 * truncated file before llama.cpp (which can abort the whole process on some malformed inputs) ever
 * opens it, and the built-in trainer's reader of the models it wrote (src/train/llama/gguf.ts). Tests
 * and benchmarks write tiny models with src/infer/testing/gguf.ts.
 *
 * Web-standard only: bytes in, values out. src/infer/models/gguf-node.ts reads a file's head.
 *
 * Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the
 * metadata key/values, the tensor infos (name, dims, ggml type, offset relative to the data section),
 * zero padding to `general.alignment`, then the tensor data, each tensor at an aligned offset.
 */

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
/** `general.alignment` when the metadata does not say. */
export const GGUF_DEFAULT_ALIGNMENT = 32;
const GGML_MAX_DIMS = 4;
const GGML_MAX_NAME = 64;

/** GGUF metadata value types (spec numbering). */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/**
 * ggml type id → [elements per block, bytes per block], as llama.cpp 3.21.1's ggml reports them.
 * The reader needs it to know how many bytes each tensor occupies.
 */
const GGML_BLOCKS: ReadonlyMap<number, readonly [number, number]> = new Map([
  [0, [1, 4]], // F32
  [1, [1, 2]], // F16
  [2, [32, 18]], // Q4_0
  [3, [32, 20]], // Q4_1
  [6, [32, 22]], // Q5_0
  [7, [32, 24]], // Q5_1
  [8, [32, 34]], // Q8_0
  [9, [32, 36]], // Q8_1
  [10, [256, 84]], // Q2_K
  [11, [256, 110]], // Q3_K
  [12, [256, 144]], // Q4_K
  [13, [256, 176]], // Q5_K
  [14, [256, 210]], // Q6_K
  [15, [256, 292]], // Q8_K
  [16, [256, 66]], // IQ2_XXS
  [17, [256, 74]], // IQ2_XS
  [18, [256, 98]], // IQ3_XXS
  [19, [256, 50]], // IQ1_S
  [20, [32, 18]], // IQ4_NL
  [21, [256, 110]], // IQ3_S
  [22, [256, 82]], // IQ2_S
  [23, [256, 136]], // IQ4_XS
  [24, [1, 1]], // I8
  [25, [1, 2]], // I16
  [26, [1, 4]], // I32
  [27, [1, 8]], // I64
  [28, [1, 8]], // F64
  [29, [256, 56]], // IQ1_M
  [30, [1, 2]], // BF16
  [34, [256, 54]], // TQ1_0
  [35, [256, 66]], // TQ2_0
  [39, [32, 17]], // MXFP4
  [40, [64, 36]], // NVFP4
  [41, [128, 18]], // Q1_0
  [42, [64, 18]], // Q2_0
]);

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensorInfo {
  name: string;
  /** ne[0] first (the fastest-varying dimension), as ggml orders them. */
  dims: number[];
  ggmlType: number;
  /** Relative to the start of the data section. */
  offset: number;
  byteLength: number;
}

export interface GgufInfo {
  version: number;
  tensorCount: number;
  metadata: Map<string, GgufValue>;
  /**
   * Each metadata key's GGUF value type (`GgufValueType`): llama.cpp reads some keys with typed
   * getters that abort the process on any other type, so a value's JS type alone is not enough.
   */
  metadataTypes: Map<string, number>;
  /** `general.architecture`. */
  architecture: string;
  /** `<architecture>.context_length`, when present. */
  contextLength: number | undefined;
  alignment: number;
  tensors: GgufTensorInfo[];
  /** File offset of the data section (header, metadata and tensor infos, padded). */
  dataOffset: number;
  /** Bytes the file must have for every tensor's data to be present. */
  requiredSize: number;
  fileSize: number;
  /** Every tensor's data lies inside `fileSize`. */
  complete: boolean;
}

/**
 * Why `readGgufInfo` refused: `not-gguf` (wrong magic), `unsupported` (version, big-endian, tensor
 * type), `malformed` (inconsistent structure), `truncated` (the file ends inside the header), or
 * `need-more` (the prefix given ends inside the header but the file is longer: read more and retry).
 */
export type GgufErrorReason = 'not-gguf' | 'unsupported' | 'malformed' | 'truncated' | 'need-more';

export class GgufError extends Error {
  override name = 'GgufError';
  constructor(
    readonly reason: GgufErrorReason,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Reads the header from a prefix of the file. Not util/reader.ts's ByteReader: a read past the prefix
 * must tell `need-more` (the file goes on: read more and retry) from `truncated` (the file ends there).
 */
class Cursor {
  pos = 0;
  private readonly view: DataView;
  private readonly text = new TextDecoder('utf-8', { fatal: true });
  constructor(
    private readonly bytes: Uint8Array,
    private readonly fileSize: number,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private need(n: number, field: string): void {
    if (this.pos + n <= this.bytes.length) return;
    if (this.pos + n <= this.fileSize) {
      throw new GgufError('need-more', `GGUF header continues past the ${this.bytes.length} bytes read`);
    }
    throw new GgufError(
      'truncated',
      `GGUF file truncated at ${field}: need ${n} bytes at offset ${this.pos}, file has ${this.fileSize}`,
    );
  }

  u8(field: string): number {
    this.need(1, field);
    return this.view.getUint8(this.pos++);
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** A u64 that must fit a JS number (counts, lengths, offsets). */
  u64n(field: string): number {
    this.need(8, field);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER))
      throw new GgufError('malformed', `GGUF ${field} too large: ${v}`);
    return Number(v);
  }
  /** Bytes the file still has after the cursor (not just the prefix read). */
  get fileRemaining(): number {
    return this.fileSize - this.pos;
  }

  string(field: string): string {
    const n = this.u64n(`${field} length`);
    if (n > this.fileRemaining) {
      throw new GgufError(
        'truncated',
        `GGUF file truncated: ${field} claims ${n} bytes, the file has ${this.fileRemaining} left`,
      );
    }
    this.need(n, field);
    const bytes = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    try {
      return this.text.decode(bytes);
    } catch {
      throw new GgufError('malformed', `GGUF ${field} is not valid UTF-8`);
    }
  }

  value(type: number, field: string, depth: number): GgufValue {
    const v = this.view;
    const fixed = (n: number): number => {
      this.need(n, field);
      const at = this.pos;
      this.pos += n;
      return at;
    };
    switch (type) {
      case GgufValueType.UINT8:
        return v.getUint8(fixed(1));
      case GgufValueType.INT8:
        return v.getInt8(fixed(1));
      case GgufValueType.UINT16:
        return v.getUint16(fixed(2), true);
      case GgufValueType.INT16:
        return v.getInt16(fixed(2), true);
      case GgufValueType.UINT32:
        return v.getUint32(fixed(4), true);
      case GgufValueType.INT32:
        return v.getInt32(fixed(4), true);
      case GgufValueType.FLOAT32:
        return v.getFloat32(fixed(4), true);
      case GgufValueType.BOOL: {
        const b = v.getUint8(fixed(1));
        if (b > 1) throw new GgufError('malformed', `GGUF ${field}: bool byte ${b}`);
        return b === 1;
      }
      case GgufValueType.STRING:
        return this.string(field);
      case GgufValueType.UINT64:
        return narrow(v.getBigUint64(fixed(8), true));
      case GgufValueType.INT64:
        return narrow(v.getBigInt64(fixed(8), true));
      case GgufValueType.FLOAT64:
        return v.getFloat64(fixed(8), true);
      case GgufValueType.ARRAY: {
        if (depth > 0) throw new GgufError('unsupported', `GGUF ${field}: nested arrays are not supported`);
        const itemType = this.u32(`${field} item type`);
        const count = this.u64n(`${field} count`);
        // Every item takes at least one byte, so a count beyond the file's remaining bytes is a lie
        // that would otherwise make us loop (or allocate) for a very long time.
        if (count > this.fileRemaining) {
          throw new GgufError(
            'truncated',
            `GGUF file truncated: ${field} claims ${count} items, the file has ${this.fileRemaining} bytes left`,
          );
        }
        const out: GgufValue[] = [];
        for (let i = 0; i < count; i++) out.push(this.value(itemType, field, depth + 1));
        return out;
      }
      default:
        throw new GgufError('malformed', `GGUF ${field}: unknown value type ${type}`);
    }
  }
}

function narrow(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/**
 * Parse a GGUF header from `bytes`, the first bytes of a file of `fileSize` bytes (the whole file
 * when `fileSize` is omitted), and check the tensor table against the file size. Throws `GgufError`;
 * `need-more` means `bytes` is a prefix that ends inside the header.
 */
export function readGgufInfo(bytes: Uint8Array, fileSize: number = bytes.length): GgufInfo {
  if (fileSize < bytes.length) throw new RangeError('fileSize is smaller than the bytes given');
  const c = new Cursor(bytes, fileSize);
  if (fileSize < 4 || c.u32('magic') !== GGUF_MAGIC) {
    throw new GgufError('not-gguf', 'not a GGUF file (the magic bytes "GGUF" are missing)');
  }
  const version = c.u32('version');
  if (version !== 2 && version !== 3) {
    const hint = version > 0xffff ? ' (a big-endian GGUF file?)' : '';
    throw new GgufError('unsupported', `unsupported GGUF version ${version}${hint}; expected 2 or 3`);
  }
  const tensorCount = c.u64n('tensor count');
  const kvCount = c.u64n('metadata count');
  // A key/value takes at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 8 + 4 + 8.
  if (kvCount * 13 + tensorCount * 32 > c.fileRemaining) {
    throw new GgufError(
      'truncated',
      `GGUF file truncated: its header claims ${kvCount} metadata entries and ${tensorCount} tensors, more than the file can hold`,
    );
  }

  const metadata = new Map<string, GgufValue>();
  const metadataTypes = new Map<string, number>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.string(`metadata key #${i}`);
    if (metadata.has(key)) throw new GgufError('malformed', `GGUF metadata key "${key}" appears twice`);
    const type = c.u32(`metadata "${key}" type`);
    metadata.set(key, c.value(type, `metadata "${key}"`, 0));
    metadataTypes.set(key, type);
  }

  const alignmentValue = metadata.get('general.alignment') ?? GGUF_DEFAULT_ALIGNMENT;
  if (
    typeof alignmentValue !== 'number' ||
    alignmentValue <= 0 ||
    (alignmentValue & (alignmentValue - 1)) !== 0
  ) {
    throw new GgufError(
      'malformed',
      `GGUF general.alignment must be a power of two, got ${String(alignmentValue)}`,
    );
  }
  const alignment = alignmentValue;

  const architecture = metadata.get('general.architecture');
  if (typeof architecture !== 'string' || architecture === '') {
    throw new GgufError('malformed', 'GGUF general.architecture is missing');
  }
  const ctx = metadata.get(`${architecture}.context_length`);
  const contextLength = typeof ctx === 'number' ? ctx : undefined;

  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  let dataEnd = 0;
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string(`tensor #${i} name`);
    if (new TextEncoder().encode(name).length >= GGML_MAX_NAME) {
      throw new GgufError('malformed', `GGUF tensor name "${name.slice(0, 80)}" is longer than ggml allows`);
    }
    if (names.has(name)) throw new GgufError('malformed', `GGUF tensor "${name}" appears twice`);
    names.add(name);
    const nDims = c.u32(`tensor "${name}" dimension count`);
    if (nDims < 1 || nDims > GGML_MAX_DIMS) {
      throw new GgufError('malformed', `GGUF tensor "${name}" has ${nDims} dimensions (1 to 4 allowed)`);
    }
    const dims: number[] = [];
    let elements = 1;
    for (let d = 0; d < nDims; d++) {
      const n = c.u64n(`tensor "${name}" dimension ${d}`);
      if (n < 1) throw new GgufError('malformed', `GGUF tensor "${name}" has an empty dimension`);
      elements *= n;
      if (elements > Number.MAX_SAFE_INTEGER)
        throw new GgufError('malformed', `GGUF tensor "${name}" is too large`);
      dims.push(n);
    }
    const ggmlType = c.u32(`tensor "${name}" type`);
    const block = GGML_BLOCKS.get(ggmlType);
    if (block === undefined) {
      throw new GgufError('unsupported', `GGUF tensor "${name}" has unknown ggml type ${ggmlType}`);
    }
    const [blockElems, blockBytes] = block;
    if (dims[0]! % blockElems !== 0) {
      throw new GgufError(
        'malformed',
        `GGUF tensor "${name}": row of ${dims[0]} is not a multiple of ${blockElems}`,
      );
    }
    const offset = c.u64n(`tensor "${name}" offset`);
    if (offset % alignment !== 0) {
      throw new GgufError(
        'malformed',
        `GGUF tensor "${name}" offset ${offset} is not aligned to ${alignment}`,
      );
    }
    const byteLength = (elements / blockElems) * blockBytes;
    dataEnd = Math.max(dataEnd, offset + byteLength);
    tensors.push({ name, dims, ggmlType, offset, byteLength });
  }
  const dataOffset = alignUp(c.pos, alignment);
  const requiredSize = dataOffset + dataEnd;
  return {
    version,
    tensorCount,
    metadata,
    metadataTypes,
    architecture,
    contextLength,
    alignment,
    tensors,
    dataOffset,
    requiredSize,
    fileSize,
    complete: requiredSize <= fileSize,
  };
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
