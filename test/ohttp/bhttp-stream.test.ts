import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeResponse } from '../../src/ohttp/bhttp.js';
import {
  StreamedResponseDecoder,
  type StreamedResponseEvent,
  streamedResponse,
} from '../../src/ohttp/bhttp-stream.js';
import { concatBytes, utf8 } from '../../src/util/bytes.js';

function encode(
  status: number,
  headers: [string, string][],
  pieces: Uint8Array[],
  trailers: [string, string][],
) {
  return concatBytes(
    streamedResponse.head(status, headers),
    ...pieces.map(streamedResponse.content),
    streamedResponse.end(trailers),
  );
}

function decodeIn(bytes: Uint8Array, cuts: number[]): StreamedResponseEvent[] {
  const d = new StreamedResponseDecoder();
  const events: StreamedResponseEvent[] = [];
  let at = 0;
  for (const c of [...cuts.filter((x) => x < bytes.length)].sort((a, b) => a - b)) {
    events.push(...d.push(bytes.subarray(at, c)));
    at = c;
  }
  events.push(...d.push(bytes.subarray(at)), ...d.end());
  return events;
}

describe('streamed Binary HTTP responses', () => {
  it('decode to the same head, content and trailers however the bytes are split', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 200, max: 599 }),
        fc.array(fc.tuple(fc.stringMatching(/^[a-z][a-z-]{0,10}$/), fc.string({ maxLength: 20 })), {
          maxLength: 4,
        }),
        fc.array(fc.uint8Array({ minLength: 0, maxLength: 100 }), { maxLength: 6 }),
        fc.array(fc.tuple(fc.stringMatching(/^[a-z][a-z-]{0,10}$/), fc.string({ maxLength: 20 })), {
          maxLength: 2,
        }),
        fc.array(fc.nat(400), { maxLength: 8 }),
        (status, headers, pieces, trailers, cuts) => {
          const events = decodeIn(encode(status, headers, pieces, trailers), cuts);
          expect(events[0]).toEqual({ type: 'head', status, headers });
          const content = events
            .filter((e) => e.type === 'content')
            .map((e) => (e as { bytes: Uint8Array }).bytes);
          expect(concatBytes(...content)).toEqual(concatBytes(...pieces));
          expect(events.at(-1)).toEqual({ type: 'trailers', trailers });
        },
      ),
    );
  });

  it('yields content as soon as each piece is complete', () => {
    const d = new StreamedResponseDecoder();
    expect(d.push(streamedResponse.head(200, [['content-type', 'text/event-stream']]))).toHaveLength(1);
    const piece = streamedResponse.content(utf8.encode('data: x\n\n'));
    expect(d.push(piece.subarray(0, 3))).toEqual([]);
    expect(d.push(piece.subarray(3))).toEqual([{ type: 'content', bytes: utf8.encode('data: x\n\n') }]);
  });

  it('accepts a message cut right after its content (RFC 9292 §3.8), refuses one cut earlier', () => {
    const head = streamedResponse.head(200, []);
    const body = streamedResponse.content(utf8.encode('abc'));
    const d = new StreamedResponseDecoder();
    d.push(concatBytes(head, body, Uint8Array.of(0)));
    expect(d.end()).toEqual([{ type: 'trailers', trailers: [] }]);
    const cut = new StreamedResponseDecoder();
    cut.push(concatBytes(head, body));
    expect(() => cut.end()).toThrow(expect.objectContaining({ code: 'truncated' }));
  });

  it('refuses known-length responses, bad statuses, trailing bytes and invalid UTF-8 fields', () => {
    expect(() => new StreamedResponseDecoder().push(encodeResponse({ status: 200 }))).toThrow(
      expect.objectContaining({ code: 'bad-framing' }),
    );
    expect(() => new StreamedResponseDecoder().push(Uint8Array.of(3, 0x40, 90))).toThrow(
      expect.objectContaining({ code: 'bad-status' }),
    );
    const whole = encode(200, [], [utf8.encode('x')], []);
    expect(() => new StreamedResponseDecoder().push(concatBytes(whole, Uint8Array.of(7)))).toThrow(
      expect.objectContaining({ code: 'trailing-bytes' }),
    );
    expect(() => new StreamedResponseDecoder().push(concatBytes(whole, Uint8Array.of(0, 0)))).not.toThrow();
    expect(() => new StreamedResponseDecoder().push(Uint8Array.of(3, 0x40, 200, 1, 0xff, 0))).toThrow(
      expect.objectContaining({ code: 'bad-message' }),
    );
    expect(() => streamedResponse.head(99, [])).toThrow(expect.objectContaining({ code: 'bad-status' }));
  });

  it('skips informational responses', () => {
    const info = Uint8Array.of(0x40, 103, 0); // 103 Early Hints, no fields
    const rest = streamedResponse.head(200, [['a', 'b']]).subarray(1);
    const events = new StreamedResponseDecoder().push(concatBytes(Uint8Array.of(3), info, rest));
    expect(events).toEqual([{ type: 'head', status: 200, headers: [['a', 'b']] }]);
  });
});
