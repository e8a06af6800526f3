import { describe, expect, it } from 'vitest';
import { fromHex, toHex } from '../src/util/bytes.js';
import { ByteReader, ParseError } from '../src/util/reader.js';

describe('byte helpers', () => {
  it('round-trips hex and rejects malformed hex', () => {
    expect(toHex(fromHex('00ff10'))).toBe('00ff10');
    expect(() => fromHex('0g')).toThrow(TypeError);
  });
  it('reports truncation with the field name', () => {
    const r = new ByteReader(new Uint8Array(3), 'quote');
    expect(() => r.u32le('header.version')).toThrow(ParseError);
    expect(() => r.u32le('header.version')).toThrow(/header.version/);
  });
});
