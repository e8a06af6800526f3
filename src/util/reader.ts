/**
 * Bounds-checked little/big-endian reader for binary evidence and file headers. Every read names the
 * field it is reading so that a short or malformed structure fails with a message an operator can act
 * on ("truncated at quote.header.qe_vendor_id: need 16 bytes at offset 12, have 4").
 */
export class ParseError extends Error {
  override name = 'ParseError';
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

export class ByteReader {
  private pos = 0;
  constructor(
    readonly bytes: Uint8Array,
    private readonly what = 'input',
  ) {}

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.bytes.length - this.pos;
  }

  private need(n: number, field: string): void {
    if (n < 0 || this.pos + n > this.bytes.length) {
      throw new ParseError(
        `truncated ${this.what} at ${field}: need ${n} bytes at offset ${this.pos}, have ${this.remaining}`,
        field,
      );
    }
  }

  bytesOf(n: number, field: string): Uint8Array {
    this.need(n, field);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  u8(field: string): number {
    this.need(1, field);
    return this.bytes[this.pos++]!;
  }

  u16le(field: string): number {
    this.need(2, field);
    const v = this.bytes[this.pos]! | (this.bytes[this.pos + 1]! << 8);
    this.pos += 2;
    return v;
  }

  u16be(field: string): number {
    this.need(2, field);
    const v = (this.bytes[this.pos]! << 8) | this.bytes[this.pos + 1]!;
    this.pos += 2;
    return v;
  }

  u32le(field: string): number {
    this.need(4, field);
    const v = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 4).getUint32(0, true);
    this.pos += 4;
    return v;
  }

  u32be(field: string): number {
    this.need(4, field);
    const v = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 4).getUint32(0, false);
    this.pos += 4;
    return v;
  }

  u64le(field: string): bigint {
    this.need(8, field);
    const v = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 8).getBigUint64(0, true);
    this.pos += 8;
    return v;
  }

  u64be(field: string): bigint {
    this.need(8, field);
    const v = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 8).getBigUint64(0, false);
    this.pos += 8;
    return v;
  }

  skip(n: number, field: string): void {
    this.need(n, field);
    this.pos += n;
  }

  /** Structures in evidence are exact: bytes after the last field are an error, not ignored. */
  end(): void {
    if (this.remaining !== 0) {
      throw new ParseError(`${this.remaining} trailing bytes after ${this.what}`, 'trailing');
    }
  }
}
