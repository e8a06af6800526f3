/**
 * The MLP trainer's resumable state: a header naming the trainer, the step, the parameter shapes and
 * a digest of everything the state is only valid with (hyperparameters, seed, data layout), then the
 * parameters and Adam moments as little-endian float32. A float32 round trip is exact, and the
 * minibatch order is a function of the seed and the step, so a restored trainer continues
 * bit-identically. A state whose digest differs (another job, other hyperparameters, other data) is
 * refused rather than loaded into a model it does not belong to.
 *
 *   "CMLPSTA1" | u32 LE header length | header JSON (UTF-8) | zero padding to 4 | float32 LE data
 */
import { MlpError } from './errors.js';

const MAGIC = new TextEncoder().encode('CMLPSTA1');
const VERSION = 1;

export interface StateHeader {
  trainer: 'mlp';
  version: number;
  step: number;
  shapes: number[][];
  /** Hex SHA-256 of the hyperparameters, seed and data layout (see the trainer's `digest`). */
  digest: string;
}

export interface StateTensors {
  params: Float32Array[];
  m: Float32Array[];
  v: Float32Array[];
}

const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function encodeState(header: Omit<StateHeader, 'trainer' | 'version'>, t: StateTensors): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify({ trainer: 'mlp', version: VERSION, ...header }));
  const start = align4(MAGIC.length + 4 + json.length);
  const arrays = [...t.params, ...t.m, ...t.v];
  const floats = arrays.reduce((a, x) => a + x.length, 0);
  const out = new Uint8Array(start + floats * 4);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint32(MAGIC.length, json.length, true);
  out.set(json, MAGIC.length + 4);
  let o = start;
  for (const a of arrays) {
    writeF32(out, o, a);
    o += a.length * 4;
  }
  return out;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function writeF32(out: Uint8Array, offset: number, a: Float32Array): void {
  if (LITTLE) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), offset);
    return;
  }
  const view = new DataView(out.buffer, out.byteOffset);
  for (let i = 0; i < a.length; i++) view.setFloat32(offset + i * 4, a[i]!, true);
}

function readF32(bytes: Uint8Array, offset: number, n: number): Float32Array {
  const out = new Float32Array(n);
  if (LITTLE) {
    new Uint8Array(out.buffer).set(bytes.subarray(offset, offset + n * 4));
    return out;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  for (let i = 0; i < n; i++) out[i] = view.getFloat32(offset + i * 4, true);
  return out;
}

function refuse(message: string): MlpError {
  return new MlpError('checkpoint-state', `mlp state: ${message}`);
}

/**
 * Decodes a state and checks it against what this trainer expects; every mismatch is refused with
 * the reason (another trainer, another version, another digest, other shapes, a cut-off file).
 */
export function decodeState(
  bytes: Uint8Array,
  expect: { digest: string; shapes: number[][]; totalSteps: number },
): { step: number; tensors: StateTensors } {
  if (bytes.length < MAGIC.length + 4 || !MAGIC.every((b, i) => bytes[i] === b)) {
    throw refuse('not a state of the mlp trainer (no CMLPSTA1 header)');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = view.getUint32(MAGIC.length, true);
  if (MAGIC.length + 4 + len > bytes.length) throw refuse('header cut off');
  let header: StateHeader;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(12, 12 + len)));
  } catch {
    throw refuse('header is not JSON');
  }
  if (typeof header !== 'object' || header === null || header.trainer !== 'mlp') {
    throw refuse(
      `saved by trainer ${JSON.stringify((header as { trainer?: unknown } | null)?.trainer)}, not mlp`,
    );
  }
  if (header.version !== VERSION) throw refuse(`version ${header.version}, this trainer reads ${VERSION}`);
  if (header.digest !== expect.digest) {
    throw refuse(
      `saved with other hyperparameters, seed or data (digest ${String(header.digest).slice(0, 16)}…, this job's is ${expect.digest.slice(0, 16)}…)`,
    );
  }
  if (JSON.stringify(header.shapes) !== JSON.stringify(expect.shapes)) {
    throw refuse(
      `parameter shapes ${JSON.stringify(header.shapes)}, this model has ${JSON.stringify(expect.shapes)}`,
    );
  }
  if (!Number.isSafeInteger(header.step) || header.step < 0 || header.step > expect.totalSteps) {
    throw refuse(`step ${header.step} is outside 0…${expect.totalSteps}`);
  }
  const start = align4(12 + len);
  const n = expect.shapes.reduce((a, s) => a + size(s), 0);
  if (bytes.length !== start + n * 4 * 3) {
    throw refuse(`${bytes.length} bytes, expected ${start + n * 4 * 3} for these shapes`);
  }
  let o = start;
  const take = (): Float32Array[] =>
    expect.shapes.map((s) => {
      const a = readF32(bytes, o, size(s));
      o += a.length * 4;
      return a;
    });
  const params = take();
  const m = take();
  const v = take();
  return { step: header.step, tensors: { params, m, v } };
}
