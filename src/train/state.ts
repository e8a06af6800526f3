/**
 * The framing of the llama and LoRA trainers' saved states: magic, the canonical-JSON header's
 * length (u32 LE), the header, zero padding to 4 bytes, then float32 LE arrays back to back. Each
 * trainer keeps its magic, header contents and refusal wording; this module holds only the byte
 * layout and the checks every such state gets, so both read and write exactly the same bytes.
 */
import { canonicalizeBytes } from '../util/index.js';

/** Builds the trainer's refusal of a state (`the saved state cannot resume this ... job: <why>`). */
export type StateRefusal = (why: string) => Error;

const utf8Fatal = new TextDecoder('utf-8', { fatal: true });

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Writes a state: `floatCount` floats in all, taken from `arrays` in order (a lazy iterable, so a
 * trainer can read its device arrays one at a time).
 */
export function encodeState(
  magic: Uint8Array,
  header: unknown,
  floatCount: number,
  arrays: Iterable<Float32Array>,
): Uint8Array {
  const json = canonicalizeBytes(header);
  const headerEnd = alignUp(magic.length + 4 + json.length, 4);
  const out = new Uint8Array(headerEnd + floatCount * 4);
  out.set(magic, 0);
  const view = new DataView(out.buffer);
  view.setUint32(magic.length, json.length, true);
  out.set(json, magic.length + 4);
  let o = headerEnd;
  for (const data of arrays) {
    for (let i = 0; i < data.length; i++, o += 4) view.setFloat32(o, data[i]!, true);
  }
  return out;
}

/** A state whose magic and header have been read; its header is the trainer's to check. */
export interface DecodedState<H> {
  header: H;
  /** Reads the float arrays of the given lengths, refusing a state of any other size. */
  floats(lengths: readonly number[], sizeWhy: (bytes: number, needed: number) => string): Float32Array[];
}

/**
 * Reads the magic and JSON header, refusing `notOurs` (e.g. "it is not a llama trainer state") when
 * the magic differs. The header is parsed, not checked: the caller checks its fields.
 */
export function decodeState<H>(
  state: Uint8Array,
  magic: Uint8Array,
  refuse: StateRefusal,
  notOurs: string,
): DecodedState<H> {
  if (state.length < magic.length + 4 || magic.some((b, i) => state[i] !== b)) throw refuse(notOurs);
  const view = new DataView(state.buffer, state.byteOffset, state.byteLength);
  const jsonLength = view.getUint32(magic.length, true);
  if (magic.length + 4 + jsonLength > state.length) throw refuse('its header is truncated');
  let header: H;
  try {
    header = JSON.parse(
      utf8Fatal.decode(state.subarray(magic.length + 4, magic.length + 4 + jsonLength)),
    ) as H;
  } catch {
    throw refuse('its header is not JSON');
  }
  const headerEnd = alignUp(magic.length + 4 + jsonLength, 4);
  const floats: DecodedState<H>['floats'] = (lengths, sizeWhy) => {
    const needed = headerEnd + lengths.reduce((n, l) => n + l, 0) * 4;
    if (state.length !== needed) throw refuse(sizeWhy(state.length, needed));
    let o = headerEnd;
    return lengths.map((l) => {
      const a = new Float32Array(l);
      for (let i = 0; i < a.length; i++, o += 4) a[i] = view.getFloat32(o, true);
      return a;
    });
  };
  return { header, floats };
}

/** Refuses a step or data cursor that is not a non-negative safe integer. */
export function checkStepAndCursor(step: unknown, cursor: unknown, refuse: StateRefusal): void {
  const isCount = (n: unknown): boolean => Number.isSafeInteger(n) && (n as number) >= 0;
  if (!isCount(step) || !isCount(cursor)) throw refuse('its step or data cursor is not a count');
}
