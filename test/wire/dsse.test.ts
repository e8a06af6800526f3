import { crypto as sigstoreCrypto, dsse as sigstoreDsse } from '@sigstore/core';
import { describe, expect, it } from 'vitest';
import { fromBase64, fromHex, toBase64, toBase64Url, toHex, utf8 } from '../../src/util/bytes.js';
import {
  type DsseEnvelope,
  type DsseVerifier,
  ecdsaDerToRaw,
  ecdsaRawToDer,
  envelopePayload,
  es256Signer,
  es256Verifier,
  IN_TOTO_PAYLOAD_TYPE,
  IN_TOTO_STATEMENT_TYPE,
  parseEnvelope,
  parseStatement,
  preAuthEncoding,
  signEnvelope,
  verifyEnvelope,
} from '../../src/wire/dsse.js';

/** A decimal integer as `size` big-endian bytes. */
function decimalBytes(dec: string, size: number): Uint8Array {
  return fromHex(
    BigInt(dec)
      .toString(16)
      .padStart(size * 2, '0'),
  );
}

async function es256Pair() {
  return (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
}

const statement = (name = 'model.gguf.sealed') => ({
  _type: IN_TOTO_STATEMENT_TYPE,
  subject: [{ name, digest: { sha256: 'ab'.repeat(32) } }],
  predicateType: 'https://example.com/test/v1',
  predicate: { hello: 'world' },
});

describe('PAE (DSSE protocol.md)', () => {
  it("matches the protocol's own example", () => {
    expect(utf8.decode(preAuthEncoding('http://example.com/HelloWorld', utf8.encode('hello world')))).toBe(
      'DSSEv1 29 http://example.com/HelloWorld 11 hello world',
    );
  });

  it('counts bytes, not characters, and keeps the space after a zero length', () => {
    // From the DSSE repository's testvectors/vectors.json: a non-ASCII type and an empty body.
    expect(toHex(preAuthEncoding('application/vnd.exämple+json', utf8.encode('x')))).toMatch(
      /^445353457631203239206170706c69636174696f6e2f766e642e6578c3a46d706c652b6a736f6e/,
    );
    expect(toHex(preAuthEncoding(IN_TOTO_PAYLOAD_TYPE, new Uint8Array(0)))).toBe(
      '445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203020',
    );
    expect(toHex(preAuthEncoding('', utf8.encode('{"_type":"https://in-toto.io/Statement/v1"}')))).toBe(
      '445353457631203020203433207b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d',
    );
  });

  it('equals @sigstore/core preAuthEncoding on assorted inputs', () => {
    const bodies = [new Uint8Array(0), utf8.encode('hello'), crypto.getRandomValues(new Uint8Array(1000))];
    for (const type of ['', IN_TOTO_PAYLOAD_TYPE, 'ünïcode/type', 'x'.repeat(300)])
      for (const body of bodies)
        expect(toHex(preAuthEncoding(type, body))).toBe(
          toHex(sigstoreDsse.preAuthEncoding(type, Buffer.from(body))),
        );
  });
});

describe('ECDSA signature encodings', () => {
  it('raw → DER → raw round-trips, with a leading zero only where the top bit is set', () => {
    for (const raw of [
      new Uint8Array(64).fill(0x7f),
      new Uint8Array(64).fill(0x80),
      Uint8Array.from({ length: 64 }, (_, i) => (i === 0 || i === 32 ? 0 : i)),
      crypto.getRandomValues(new Uint8Array(64)),
    ]) {
      const der = ecdsaRawToDer(raw);
      expect(der[0]).toBe(0x30);
      expect(toHex(ecdsaDerToRaw(der)!)).toBe(toHex(raw));
    }
    expect(toHex(ecdsaRawToDer(new Uint8Array(64).fill(0x80)).subarray(0, 5))).toBe('3046022100');
  });

  it('refuses DER that is not minimal, negative, trailing or truncated', () => {
    const good = ecdsaRawToDer(new Uint8Array(64).fill(0x11));
    expect(ecdsaDerToRaw(good)).not.toBeNull();
    const variants = [
      Uint8Array.of(...good, 0), // trailing byte
      good.subarray(0, good.length - 1), // truncated
      Uint8Array.of(0x30, good[1]! + 1, 0x02, 0x21, 0x00, ...good.subarray(4)), // needless zero
      Uint8Array.of(...good.subarray(0, 4), 0x91, ...good.subarray(5)), // negative r
      Uint8Array.of(0x31, ...good.subarray(1)), // SET, not SEQUENCE
    ];
    for (const v of variants) expect(ecdsaDerToRaw(v), toHex(v)).toBeNull();
  });

  it("verifies the DSSE protocol example's signature (raw r‖s there) once given as DER", async () => {
    const x = decimalBytes(
      '46950820868899156662930047687818585632848591499744589407958293238635476079160',
      32,
    );
    const y = decimalBytes(
      '5640078356564379163099075877009565129882514886557779369047442380624545832820',
      32,
    );
    const key = await es256Verifier({ kty: 'EC', crv: 'P-256', x: toBase64Url(x), y: toBase64Url(y) });
    const raw = fromBase64(
      'A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==',
    );
    const pae = preAuthEncoding('http://example.com/HelloWorld', utf8.encode('hello world'));
    expect(await key.verify(pae, ecdsaRawToDer(raw))).toBe(true);
    // The raw form itself is refused: one signature, one encoding.
    expect(await key.verify(pae, raw)).toBe(false);
    const env: DsseEnvelope = {
      payload: 'aGVsbG8gd29ybGQ=',
      payloadType: 'http://example.com/HelloWorld',
      signatures: [{ sig: toBase64(ecdsaRawToDer(raw)) }],
    };
    const v = await verifyEnvelope(env, [key], { payloadTypes: ['http://example.com/HelloWorld'] });
    expect(utf8.decode(v.payload)).toBe('hello world');
  });
});

describe('signing and verifying', () => {
  it('an envelope we sign verifies with @sigstore/core (node:crypto, DER) and with ours', async () => {
    const pair = await es256Pair();
    const body = utf8.encode(JSON.stringify(statement()));
    const env = await signEnvelope(IN_TOTO_PAYLOAD_TYPE, body, [es256Signer(pair.privateKey, 'k1')]);
    expect(env).toMatchObject({ payloadType: IN_TOTO_PAYLOAD_TYPE, signatures: [{ keyid: 'k1' }] });
    const spki = new Uint8Array(await crypto.subtle.exportKey('spki', pair.publicKey));
    const key = sigstoreCrypto.createPublicKey(Buffer.from(spki));
    const pae = sigstoreDsse.preAuthEncoding(env.payloadType, Buffer.from(env.payload, 'base64'));
    const sig = Buffer.from(env.signatures[0]!.sig, 'base64');
    expect(sigstoreCrypto.verify(pae, key, sig, 'sha256')).toBe(true);
    expect(sigstoreCrypto.verify(pae, key, sig)).toBe(true);
    const v = await verifyEnvelope(env, [await es256Verifier(pair.publicKey, 'k1')], {
      payloadTypes: [IN_TOTO_PAYLOAD_TYPE],
    });
    expect(parseStatement(v.payload)).toEqual(statement());
  });

  it('a signature node:crypto made (DER) verifies with ours', async () => {
    const { generateKeyPairSync, sign } = await import('node:crypto');
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const body = utf8.encode('{"a":1}');
    const sig = sign('sha256', preAuthEncoding('application/x-test', body), privateKey);
    const env = {
      payload: toBase64(body),
      payloadType: 'application/x-test',
      signatures: [{ sig: sig.toString('base64') }],
    };
    const jwk = publicKey.export({ format: 'jwk' }) as JsonWebKey;
    await expect(
      verifyEnvelope(env, [await es256Verifier(jwk)], { payloadTypes: ['application/x-test'] }),
    ).resolves.toMatchObject({ payloadType: 'application/x-test' });
  });

  it('a change of any single byte of the payload or the signature is refused', async () => {
    const pair = await es256Pair();
    const body = utf8.encode(JSON.stringify(statement()));
    const env = await signEnvelope(IN_TOTO_PAYLOAD_TYPE, body, [es256Signer(pair.privateKey)]);
    const verifier = await es256Verifier(pair.publicKey);
    const opts = { payloadTypes: [IN_TOTO_PAYLOAD_TYPE] };
    const sig = fromBase64(env.signatures[0]!.sig);
    const refused = async (e: DsseEnvelope) => {
      await expect(verifyEnvelope(e, [verifier], opts)).rejects.toMatchObject({ code: 'dsse-signature' });
    };
    for (let i = 0; i < body.length; i++) {
      const b = body.slice();
      b[i]! ^= 1 << (i % 8);
      await refused({ ...env, payload: toBase64(b) });
    }
    for (let i = 0; i < sig.length; i++) {
      const s = sig.slice();
      s[i]! ^= 1 << (i % 8);
      await refused({ ...env, signatures: [{ sig: toBase64(s) }] });
    }
    // The type is authenticated too.
    await expect(
      verifyEnvelope({ ...env, payloadType: 'application/vnd.in-toto+jsoN' }, [verifier], {
        payloadTypes: [IN_TOTO_PAYLOAD_TYPE, 'application/vnd.in-toto+jsoN'],
      }),
    ).rejects.toMatchObject({ code: 'dsse-signature' });
  });

  it('accepts URL-safe base64 and refuses an unsupported payload type after the signature', async () => {
    const pair = await es256Pair();
    const body = crypto.getRandomValues(new Uint8Array(99));
    const env = await signEnvelope('application/x-other', body, [es256Signer(pair.privateKey)]);
    const verifier = await es256Verifier(pair.publicKey);
    const urlSafe = {
      ...env,
      payload: toBase64Url(body),
      signatures: [{ sig: toBase64Url(fromBase64(env.signatures[0]!.sig)) }],
    };
    expect(
      toHex((await verifyEnvelope(urlSafe, [verifier], { payloadTypes: ['application/x-other'] })).payload),
    ).toBe(toHex(body));
    await expect(
      verifyEnvelope(env, [verifier], { payloadTypes: [IN_TOTO_PAYLOAD_TYPE] }),
    ).rejects.toMatchObject({
      code: 'dsse-payload-type',
    });
  });
});

/**
 * The DSSE repository's protocol test vectors (testvectors/vectors.json): Ed25519 keys (the RFC 8032
 * test keys), run through verifyEnvelope with Ed25519 verifiers, thresholds included.
 */
describe('DSSE test vectors (Ed25519)', () => {
  const keys = {
    A: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    B: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
  };
  const ed25519 = async (keyid: string, hex: string): Promise<DsseVerifier> => {
    const key = await crypto.subtle.importKey('raw', fromHex(hex).slice(), { name: 'Ed25519' }, false, [
      'verify',
    ]);
    return {
      keyid,
      verify: (m, s) => crypto.subtle.verify({ name: 'Ed25519' }, key, s.slice(), m.slice()),
    };
  };
  const stmt = 'eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==';
  const sigA = '2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA==';
  const sigB = 'c1+67/aT0yqEpwx8PsVY3MLHsj9D0CZ014/Fv/QlG59P+9CobUZ7xECJ/V3USG0Ob9CiE5LjReEZUzNF2l7eBw==';
  const vectors: [string, DsseEnvelope, number, string[], boolean][] = [
    [
      'single-signature',
      { payload: stmt, payloadType: IN_TOTO_PAYLOAD_TYPE, signatures: [{ sig: sigA, keyid: 'A' }] },
      1,
      [IN_TOTO_PAYLOAD_TYPE],
      true,
    ],
    [
      'url-safe-base64',
      {
        payload: '-_-_Pj8=',
        payloadType: IN_TOTO_PAYLOAD_TYPE,
        signatures: [
          {
            sig: 'P-_KHICeR7tI6S_YyejJTRtrXhcQyQ2LYPaL8h90KjC9qN8HU_svOQ6TuDOT1HIrsGW886DbWNWcCmX5twLrAw==',
            keyid: 'A',
          },
        ],
      },
      1,
      [IN_TOTO_PAYLOAD_TYPE],
      true,
    ],
    [
      'payload-type-swapped',
      {
        payload: stmt,
        payloadType: 'application/vnd.example.other+json',
        signatures: [{ sig: sigA, keyid: 'A' }],
      },
      1,
      [IN_TOTO_PAYLOAD_TYPE, 'application/vnd.example.other+json'],
      false,
    ],
    [
      'non-ascii-payload-type',
      {
        payload: stmt,
        payloadType: 'application/vnd.exämple+json',
        signatures: [
          {
            sig: 'xmSk/ug66ysT7ayhkCIjhAq42zgZXSsEWuzUaNL7w2eGAdF/NU6/fRXPtmfN+5DNSAs5/i2lUnHjbbjPsu0tAw==',
            keyid: 'A',
          },
        ],
      },
      1,
      ['application/vnd.exämple+json'],
      true,
    ],
    [
      'empty-payload',
      {
        payload: '',
        payloadType: IN_TOTO_PAYLOAD_TYPE,
        signatures: [
          {
            sig: 'gSggCAaTLTYyRH6FIDBem6meyIynsYy8RTHVzwx9tnTb7Bg/1jMWnuVgI/gffqmbsC2VX5/jHfkkDqsj7CDbDg==',
            keyid: 'A',
          },
        ],
      },
      1,
      [IN_TOTO_PAYLOAD_TYPE],
      true,
    ],
    [
      'empty-payload-type',
      {
        payload: stmt,
        payloadType: '',
        signatures: [
          {
            sig: 'iC3q/+3Rm0+lpAJRueDmDh15PnwCfxKmS0NAfKsbv+zgulXQC/WM9trc+j1XEqlwDIg/vf/uNfebeD6sxInrDg==',
            keyid: 'A',
          },
        ],
      },
      1,
      [IN_TOTO_PAYLOAD_TYPE],
      false,
    ],
    [
      'threshold-two-distinct-keys',
      {
        payload: stmt,
        payloadType: IN_TOTO_PAYLOAD_TYPE,
        signatures: [
          { sig: sigA, keyid: 'A' },
          { sig: sigB, keyid: 'B' },
        ],
      },
      2,
      [IN_TOTO_PAYLOAD_TYPE],
      true,
    ],
    [
      'threshold-two-one-key-twice',
      {
        payload: stmt,
        payloadType: IN_TOTO_PAYLOAD_TYPE,
        signatures: [
          { sig: sigA, keyid: 'A' },
          { sig: sigA, keyid: 'A' },
        ],
      },
      2,
      [IN_TOTO_PAYLOAD_TYPE],
      false,
    ],
    [
      'threshold-two-without-keyids',
      { payload: stmt, payloadType: IN_TOTO_PAYLOAD_TYPE, signatures: [{ sig: sigA }, { sig: sigB }] },
      2,
      [IN_TOTO_PAYLOAD_TYPE],
      true,
    ],
  ];
  for (const [id, envelope, threshold, payloadTypes, accept] of vectors) {
    it(id, async () => {
      const trusted = [await ed25519('A', keys.A), await ed25519('B', keys.B)];
      const p = verifyEnvelope(envelope, trusted, { threshold, payloadTypes });
      if (accept) await expect(p).resolves.toMatchObject({ payloadType: envelope.payloadType });
      else await expect(p).rejects.toMatchObject({ name: 'DsseError' });
    });
  }
});

describe('parsing', () => {
  it('names what is wrong with an envelope (dsse-malformed)', () => {
    const cases: [unknown, RegExp][] = [
      ['not json', /not JSON/],
      ['[1]', /not a JSON object/],
      [{ payload: 'e30=', signatures: [{ sig: 'AA==' }] }, /payloadType/],
      [{ payload: 'e30=', payloadType: 't', signatures: [] }, /non-empty list/],
      [{ payload: '%%%', payloadType: 't', signatures: [{ sig: 'AA==' }] }, /payload is not base64/],
      [{ payload: 'e30=', payloadType: 't', signatures: [{ sig: 1 }] }, /signatures\[0\]\.sig/],
      [{ payload: 'e30=', payloadType: 't', signatures: [{ sig: 'AA==', keyid: 5 }] }, /keyid/],
      // Canonical base64 only: unused bits zero, one alphabet, no whitespace.
      [{ payload: 'e31=', payloadType: 't', signatures: [{ sig: 'AA==' }] }, /payload is not base64/],
      [{ payload: 'e30=', payloadType: 't', signatures: [{ sig: '+_8=' }] }, /sig is not base64/],
      [{ payload: ' e30=', payloadType: 't', signatures: [{ sig: 'AA==' }] }, /payload is not base64/],
      // Nothing unsigned rides along.
      [
        { payload: 'e30=', payloadType: 't', signatures: [{ sig: 'AA==' }], note: 'x' },
        /members DSSE does not define: note/,
      ],
      [
        { payload: 'e30=', payloadType: 't', signatures: [{ sig: 'AA==', keyie: 'k' }] },
        /signatures\[0\] has members/,
      ],
    ];
    for (const [input, message] of cases) {
      expect(() => parseEnvelope(input), String(message)).toThrow(message);
      try {
        parseEnvelope(input);
      } catch (e) {
        expect((e as { code: string }).code).toBe('dsse-malformed');
      }
    }
    const env = parseEnvelope(
      utf8.encode('{"payload":"e30","payloadType":"t","signatures":[{"sig":"AA","keyid":""}]}'),
    );
    expect(env.signatures).toEqual([{ sig: 'AA' }]);
    expect(utf8.decode(envelopePayload(env))).toBe('{}');
  });

  it('names what is wrong with a statement (statement-malformed)', () => {
    const bad = (v: unknown) => () => parseStatement(utf8.encode(JSON.stringify(v)));
    expect(bad({ ...statement(), _type: 'https://in-toto.io/Statement/v0.1' })).toThrow(/_type/);
    expect(bad({ ...statement(), subject: [] })).toThrow(/subject must be/);
    expect(bad({ ...statement(), subject: [{ name: 'a', digest: { sha256: 'ABC' } }] })).toThrow(
      /lower-case hex/,
    );
    expect(bad({ ...statement(), predicateType: '' })).toThrow(/predicateType/);
    expect(bad({ ...statement(), predicate: [] })).toThrow(/predicate must be an object/);
    expect(() => parseStatement(utf8.encode('{'))).toThrow(
      expect.objectContaining({ code: 'statement-malformed' }),
    );
  });
});
