import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type BhttpRequest,
  type BhttpResponse,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  encodeVarint,
  OhttpError,
  VarReader,
} from '../../src/ohttp/index.js';
import { fromHex, toHex, utf8 } from '../../src/util/bytes.js';
import { expectCode } from './helpers.js';

// RFC 9292 §5.1 Figure 8: GET /hello.txt, known length.
const FIG8 =
  '0003474554056874747073000a2f68656c6c6f2e747874406c0a757365722d6167656e74346375726c2f372e31362e33206c69626375726c2f372e31362e33204f70656e53534c2f302e392e376c207a6c69622f312e322e3304686f73740f7777772e6578616d706c652e636f6d0f6163636570742d6c616e677561676506656e2c206d690000';
// Figure 9: the same request, indeterminate length, with padding.
const FIG9 =
  '0203474554056874747073000a2f68656c6c6f2e7478740a757365722d6167656e74346375726c2f372e31362e33206c69626375726c2f372e31362e33204f70656e53534c2f302e392e376c207a6c69622f312e322e3304686f73740f7777772e6578616d706c652e636f6d0f6163636570742d6c616e677561676506656e2c206d6900000000000000000000000000';
// §5.2 Figure 11: indeterminate-length response with 102 and 103 informational responses.
const FIG11 =
  '0340660772756e6e696e670a22736c65657020313522004067046c696e6b233c2f7374796c652e6373733e3b2072656c3d7072656c6f61643b2061733d7374796c65046c696e6b243c2f7363726970742e6a733e3b2072656c3d7072656c6f61643b2061733d7363726970740040c804646174651d4d6f6e2c203237204a756c20323030392031323a32383a353320474d5406736572766572064170616368650d6c6173742d6d6f6469666965641d5765642c203232204a756c20323030392031393a31353a353620474d5404657461671422333461613338372d642d3135363865623030220d6163636570742d72616e6765730562797465730e636f6e74656e742d6c656e67746802353104766172790f4163636570742d456e636f64696e670c636f6e74656e742d747970650a746578742f706c61696e003348656c6c6f20576f726c6421204d7920636f6e74656e7420696e636c75646573206120747261696c696e672043524c462e0d0a0000';
// §5.2 Figure 13: known-length response with a trailer.
const FIG13 =
  '0140c8001d5468697320636f6e74656e7420636f6e7461696e732043524c462e0d0a0d07747261696c65720474657874';

const HELLO: BhttpRequest = {
  method: 'GET',
  scheme: 'https',
  authority: '',
  path: '/hello.txt',
  headers: [
    ['user-agent', 'curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3'],
    ['host', 'www.example.com'],
    ['accept-language', 'en, mi'],
  ],
  content: new Uint8Array(0),
  trailers: [],
};

describe('QUIC varints', () => {
  it('encodes the RFC 9000 §A.1 examples', () => {
    expect(toHex(encodeVarint(494878333))).toBe('9d7f3e7d');
    expect(toHex(encodeVarint(15293))).toBe('7bbd');
    expect(toHex(encodeVarint(37))).toBe('25');
    expect(new VarReader(fromHex('4025'), 'x').varint('v')).toBe(37);
  });
  it('round-trips every safe integer', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => {
        const r = new VarReader(encodeVarint(n), 'x');
        expect(r.varint('v')).toBe(n);
        expect(r.atEnd()).toBe(true);
      }),
      { numRuns: 200 },
    );
  });
  it('refuses a truncated varint and one beyond 2^53', async () => {
    await expectCode(() => new VarReader(fromHex('7b'), 'x').varint('v'), 'truncated');
    // RFC 9000's 8-byte example, 151288809941952652, is beyond 2^53: refused rather than rounded.
    await expectCode(() => new VarReader(fromHex('c2197c5eff14e88c'), 'x').varint('v'), 'bad-varint');
  });
});

describe('RFC 9292 examples', () => {
  it('Figure 8: encodes the known-length request byte for byte and decodes it back', () => {
    expect(toHex(encodeRequest(HELLO))).toBe(FIG8);
    expect(decodeRequest(fromHex(FIG8))).toEqual(HELLO);
  });
  it('Figure 9: the indeterminate-length form with padding decodes to the same request', () => {
    expect(decodeRequest(fromHex(FIG9))).toEqual(HELLO);
  });
  it('Figure 11: informational responses, then the final response', () => {
    const res = decodeResponse(fromHex(FIG11));
    expect(res.informational).toEqual([
      { status: 102, headers: [['running', '"sleep 15"']] },
      {
        status: 103,
        headers: [
          ['link', '</style.css>; rel=preload; as=style'],
          ['link', '</script.js>; rel=preload; as=script'],
        ],
      },
    ]);
    expect(res.status).toBe(200);
    expect(res.headers).toContainEqual(['content-type', 'text/plain']);
    expect(utf8.decode(res.content)).toBe('Hello World! My content includes a trailing CRLF.\r\n');
    expect(res.trailers).toEqual([]);
    // Re-encoded in known-length form it decodes to the same message.
    expect(decodeResponse(encodeResponse(res))).toEqual(res);
  });
  it('Figure 13: encodes the known-length response with a trailer byte for byte', () => {
    const res: BhttpResponse = {
      informational: [],
      status: 200,
      headers: [],
      content: utf8.encode('This content contains CRLF.\r\n'),
      trailers: [['trailer', 'text']],
    };
    expect(toHex(encodeResponse(res))).toBe(FIG13);
    expect(decodeResponse(fromHex(FIG13))).toEqual(res);
  });
  it('truncated empty trailing sections (RFC 9458 Appendix A messages) decode', () => {
    expect(decodeResponse(fromHex('0140c8'))).toEqual({
      informational: [],
      status: 200,
      headers: [],
      content: new Uint8Array(0),
      trailers: [],
    });
    expect(decodeRequest(fromHex('00034745540568747470730b6578616d706c652e636f6d012f'))).toMatchObject({
      method: 'GET',
      authority: 'example.com',
      path: '/',
    });
  });
});

describe('strict parsing', () => {
  it('refuses every truncation inside a section', async () => {
    const full = fromHex(FIG8);
    // Cutting at a section boundary is allowed only when everything cut is empty (RFC 9292 §3.8).
    for (let cut = 1; cut < full.length - 2; cut++) {
      if (cut === 23) continue; // right after the control data: an empty-everything request is valid
      await expectCode(() => decodeRequest(full.subarray(0, cut)), 'truncated');
    }
  });
  it('refuses non-zero bytes after the message and accepts zero padding', async () => {
    await expectCode(() => decodeRequest(fromHex(`${FIG8}01`)), 'trailing-bytes');
    expect(decodeRequest(fromHex(`${FIG8}0000`))).toEqual(HELLO);
  });
  it('refuses a response framing on a request, an unknown framing, a bad status', async () => {
    await expectCode(() => decodeRequest(fromHex(FIG13)), 'bad-framing');
    await expectCode(() => decodeResponse(fromHex(FIG8)), 'bad-framing');
    await expectCode(() => decodeRequest(fromHex('04')), 'bad-framing');
    await expectCode(() => decodeResponse(fromHex('014258')), 'bad-status');
    await expectCode(() => encodeResponse({ status: 99 }), 'bad-status');
  });
  it('refuses a header section length that runs past the input', async () => {
    await expectCode(() => decodeRequest(fromHex('000347455405687474707300012f3fffffff')), 'truncated');
  });
  it('random mutations of the examples never crash: decoded or an OhttpError', () => {
    const seeds = [FIG8, FIG9, FIG11, FIG13].map(fromHex);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 3 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.nat(),
        (i, flips, cut) => {
          const b = seeds[i]!.slice();
          for (const [at, v] of flips) b[at % b.length] = v;
          const input = b.subarray(0, b.length - (cut % 8));
          for (const decode of [decodeRequest, decodeResponse]) {
            try {
              decode(input);
            } catch (e) {
              expect(e).toBeInstanceOf(OhttpError);
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

const field = fc.tuple(
  fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/),
  fc.string({ maxLength: 40 }),
) as fc.Arbitrary<[string, string]>;
const bytes = fc.uint8Array({ maxLength: 200 });

describe('round trips', () => {
  it('requests', () => {
    fc.assert(
      fc.property(
        fc.record({
          method: fc.stringMatching(/^[A-Z]{1,8}$/),
          scheme: fc.constantFrom('https', 'http'),
          authority: fc.string({ maxLength: 30 }),
          path: fc.string({ maxLength: 30 }),
          headers: fc.array(field, { maxLength: 6 }),
          content: bytes,
          trailers: fc.array(field, { maxLength: 3 }),
        }),
        (req) => {
          expect(decodeRequest(encodeRequest(req))).toEqual(req);
        },
      ),
      { numRuns: 200 },
    );
  });
  it('responses', () => {
    fc.assert(
      fc.property(
        fc.record({
          informational: fc.array(
            fc.record({
              status: fc.integer({ min: 100, max: 199 }),
              headers: fc.array(field, { maxLength: 3 }),
            }),
            { maxLength: 2 },
          ),
          status: fc.integer({ min: 200, max: 599 }),
          headers: fc.array(field, { maxLength: 6 }),
          content: bytes,
          trailers: fc.array(field, { maxLength: 3 }),
        }),
        (res) => {
          expect(decodeResponse(encodeResponse(res))).toEqual(res);
        },
      ),
      { numRuns: 200 },
    );
  });
});
