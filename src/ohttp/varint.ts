/** QUIC variable-length integers (RFC 9000 §16) and a bounds-checked reader over them. */
import { OhttpError } from './errors.js';

export function encodeVarint(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new OhttpError('bad-varint', `${n} is not a varint value`);
  if (n < 0x40) return Uint8Array.of(n);
  if (n < 0x4000) return Uint8Array.of(0x40 | (n >> 8), n & 0xff);
  if (n < 0x40000000) return Uint8Array.of(0x80 | (n >>> 24), (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  const out = new Uint8Array(8);
  const hi = Math.floor(n / 2 ** 32);
  const lo = n >>> 0;
  new DataView(out.buffer).setUint32(0, hi | 0xc0000000);
  new DataView(out.buffer).setUint32(4, lo);
  return out;
}

export class VarReader {
  private pos = 0;
  constructor(
    readonly bytes: Uint8Array,
    private readonly what: string,
  ) {}

  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.bytes.length - this.pos;
  }
  atEnd(): boolean {
    return this.pos >= this.bytes.length;
  }

  take(n: number, field: string): Uint8Array {
    if (n > this.remaining) {
      throw new OhttpError(
        'truncated',
        `truncated ${this.what} at ${field}: need ${n} bytes at offset ${this.pos}, have ${this.remaining}`,
      );
    }
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  u8(field: string): number {
    return this.take(1, field)[0]!;
  }

  u16(field: string): number {
    const b = this.take(2, field);
    return (b[0]! << 8) | b[1]!;
  }

  varint(field: string): number {
    const first = this.take(1, field)[0]!;
    const len = 1 << (first >> 6);
    const rest = this.take(len - 1, field);
    let v = first & 0x3f;
    for (const b of rest) v = v * 256 + b;
    if (!Number.isSafeInteger(v)) {
      // JS numbers are exact only to 2^53; a larger length could never be satisfied anyway.
      throw new OhttpError('bad-varint', `${this.what} ${field} is too large (beyond 2^53)`);
    }
    return v;
  }

  /** A varint length followed by that many bytes. */
  lengthPrefixed(field: string): Uint8Array {
    return this.take(this.varint(`${field} length`), field);
  }
}
