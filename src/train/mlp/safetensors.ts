/**
 * A safetensors writer (float32 only): u64 LE header length, a JSON header naming each tensor's dtype,
 * shape and byte range plus a `__metadata__` map of strings, padded with spaces to 8 bytes, then the
 * little-endian data. https://github.com/huggingface/safetensors#format
 */

export interface F32Tensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export function writeSafetensors(tensors: F32Tensor[], metadata: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length)
      throw new RangeError(`safetensors: ${t.name} has ${t.data.length} values for shape ${t.shape}`);
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + n * 4] };
    offset += n * 4;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = (json.length + 7) & ~7;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let o = 8 + json.length;
  for (const t of tensors) {
    for (let i = 0; i < t.data.length; i++) view.setFloat32(o + i * 4, t.data[i]!, true);
    o += t.data.length * 4;
  }
  return out;
}
