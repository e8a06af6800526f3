import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  AEAD_AES_128_GCM,
  AEAD_AES_256_GCM,
  decapsulateRequest,
  decapsulateResponse,
  decodeKeyConfig,
  decodeKeyConfigList,
  decodeRequest,
  decodeResponse,
  encapsulateRequest,
  encapsulateResponse,
  encodeKeyConfig,
  encodeKeyConfigList,
  encodeRequest,
  encodeResponse,
  type GatewayKey,
  KDF_HKDF_SHA256,
  KEM_X25519_HKDF_SHA256,
  type KeyConfig,
  selectSuite,
} from '../../src/ohttp/index.js';
import { concatBytes, fromHex, toHex } from '../../src/util/bytes.js';
import { BACKENDS, expectCode } from './helpers.js';

// RFC 9458 Appendix A.
const A = {
  skR: '3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a',
  keyConfig: '01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003',
  request: '00034745540568747470730b6578616d706c652e636f6d012f',
  skE: 'bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73',
  pkE: '4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472',
  encRequest:
    '010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525',
  response: '0140c8',
  responseNonce: 'c789e7151fcba46158ca84b04464910d',
  encResponse: 'c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd',
};

const config = decodeKeyConfig(fromHex(A.keyConfig));
const gateway: GatewayKey[] = [{ config, privateKey: fromHex(A.skR) }];

describe('RFC 9458 Appendix A key configuration', () => {
  it('parses the key configuration and encodes it back byte for byte', () => {
    expect(config.keyId).toBe(1);
    expect(config.kemId).toBe(KEM_X25519_HKDF_SHA256);
    expect(toHex(config.publicKey)).toBe('31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155');
    expect(config.suites).toEqual([
      { kdfId: 1, aeadId: 1 },
      { kdfId: 1, aeadId: 3 },
    ]);
    expect(toHex(encodeKeyConfig(config))).toBe(A.keyConfig);
    expect(selectSuite(config)).toEqual({ kdfId: KDF_HKDF_SHA256, aeadId: AEAD_AES_128_GCM });
  });
});

describe.each(BACKENDS)('RFC 9458 Appendix A known answers (%s backend)', (_name, backend) => {
  it('client: with the fixed ephemeral key, the encapsulated request is exact', async () => {
    const { encapsulated } = await encapsulateRequest(config, fromHex(A.request), {
      ephemeral: { privateKey: fromHex(A.skE), publicKey: fromHex(A.pkE) },
      backend,
    });
    expect(toHex(encapsulated)).toBe(A.encRequest);
  });

  it('gateway: opens the request, and with the fixed nonce the encapsulated response is exact', async () => {
    const { request, context } = await decapsulateRequest(fromHex(A.encRequest), gateway, { backend });
    // The response is sealed with the backend recorded in the context.
    expect(context.backend).toBe(backend);
    expect(toHex(request)).toBe(A.request);
    expect(decodeRequest(request)).toMatchObject({
      method: 'GET',
      scheme: 'https',
      authority: 'example.com',
    });
    const res = await encapsulateResponse(context, fromHex(A.response), fromHex(A.responseNonce));
    expect(toHex(res)).toBe(A.encResponse);
  });

  it('client: opens the published encapsulated response', async () => {
    const { context } = await encapsulateRequest(config, fromHex(A.request), {
      ephemeral: { privateKey: fromHex(A.skE), publicKey: fromHex(A.pkE) },
      backend,
    });
    const res = await decapsulateResponse(context, fromHex(A.encResponse));
    expect(toHex(res)).toBe(A.response);
    expect(decodeResponse(res).status).toBe(200);
  });
});

async function freshKey(keyId: number, aeadId: number): Promise<GatewayKey> {
  const kp = (await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits'])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', kp.publicKey));
  const jwk = await crypto.subtle.exportKey('jwk', kp.privateKey);
  const privateKey = Uint8Array.from(atob(jwk.d!.replace(/-/g, '+').replace(/_/g, '/')), (c) =>
    c.charCodeAt(0),
  );
  const cfg: KeyConfig = {
    keyId,
    kemId: KEM_X25519_HKDF_SHA256,
    publicKey,
    suites: [{ kdfId: KDF_HKDF_SHA256, aeadId }],
  };
  return { config: cfg, privateKey };
}

describe.each(BACKENDS)('round trips (%s backend)', (_name, backend) => {
  it('BHTTP inside OHTTP, AES-128-GCM and AES-256-GCM', async () => {
    const keys = [await freshKey(7, AEAD_AES_128_GCM), await freshKey(9, AEAD_AES_256_GCM)];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(0, 1),
        fc.uint8Array({ maxLength: 300 }),
        fc.uint8Array({ maxLength: 300 }),
        async (which, body, answer) => {
          const key = keys[which]!;
          const req = encodeRequest({ method: 'POST', path: '/v1/chat/completions', content: body });
          const { encapsulated, context } = await encapsulateRequest(key.config, req, { backend });
          const opened = await decapsulateRequest(encapsulated, keys, { backend });
          expect(decodeRequest(opened.request).content).toEqual(body);
          const res = await encapsulateResponse(
            opened.context,
            encodeResponse({ status: 200, content: answer }),
          );
          expect(res.length).toBe(
            (which === 0 ? 16 : 32) + encodeResponse({ status: 200, content: answer }).length + 16,
          );
          expect(decodeResponse(await decapsulateResponse(context, res)).content).toEqual(answer);
        },
      ),
      { numRuns: 30 },
    );
  });
  it('binds the label: a request sealed under one opens only under the same (string or option)', async () => {
    const key = await freshKey(3, AEAD_AES_128_GCM);
    const label = 'message/bhttp chunked request';
    const { encapsulated } = await encapsulateRequest(key.config, fromHex(A.request), { label, backend });
    expect(toHex((await decapsulateRequest(encapsulated, [key], label)).request)).toBe(A.request);
    expect(toHex((await decapsulateRequest(encapsulated, [key], { label, backend })).request)).toBe(
      A.request,
    );
    await expectCode(decapsulateRequest(encapsulated, [key], { backend }), 'decrypt-failed');
  });
});

describe('key configuration lists', () => {
  it('application/ohttp-keys lists round-trip', () => {
    const list = encodeKeyConfigList([config, config]);
    expect(toHex(list)).toBe(`002d${A.keyConfig}002d${A.keyConfig}`);
    expect(decodeKeyConfigList(list)).toEqual([config, config]);
  });
});

describe.each(BACKENDS)('refusals (%s backend)', (_name, backend) => {
  const enc = fromHex(A.encRequest);
  const flip = (b: Uint8Array, i: number) => {
    const c = b.slice();
    c[i]! ^= 0x01;
    return c;
  };

  it('a flipped byte in the key id is an unknown key', async () => {
    await expectCode(decapsulateRequest(flip(enc, 0), gateway, { backend }), 'unknown-key-id');
  });
  it('wrong KEM, KDF or AEAD ids are refused', async () => {
    await expectCode(decapsulateRequest(flip(enc, 2), gateway, { backend }), 'unsupported-kem');
    await expectCode(decapsulateRequest(flip(enc, 4), gateway, { backend }), 'unsupported-kdf');
    await expectCode(decapsulateRequest(flip(enc, 6), gateway, { backend }), 'unsupported-aead'); // 0x0000
    // 0x0003 (ChaCha20-Poly1305) is offered by the key but not implemented here.
    const chacha = enc.slice();
    chacha[6] = 3;
    await expectCode(decapsulateRequest(chacha, gateway, { backend }), 'unsupported-aead');
  });
  it('every flipped byte in enc or the ciphertext fails decryption', async () => {
    for (let i = 7; i < enc.length; i++) {
      await expectCode(decapsulateRequest(flip(enc, i), gateway, { backend }), 'decrypt-failed');
    }
  });
  it('truncated requests are refused', async () => {
    for (const n of [0, 3, 7, 38, 39, 54]) {
      await expectCode(decapsulateRequest(enc.subarray(0, n), gateway, { backend }), 'truncated');
    }
    await expectCode(
      decapsulateRequest(enc.subarray(0, enc.length - 1), gateway, { backend }),
      'decrypt-failed',
    );
  });
  it('a flipped byte in the response nonce or ciphertext, or a short response, is refused', async () => {
    const { context } = await encapsulateRequest(config, fromHex(A.request), {
      ephemeral: { privateKey: fromHex(A.skE), publicKey: fromHex(A.pkE) },
      backend,
    });
    const res = fromHex(A.encResponse);
    for (let i = 0; i < res.length; i++) {
      await expectCode(decapsulateResponse(context, flip(res, i)), 'decrypt-failed');
    }
    await expectCode(decapsulateResponse(context, res.subarray(0, 20)), 'truncated');
    await expectCode(decapsulateResponse(context, res.subarray(0, res.length - 1)), 'decrypt-failed');
  });
  it('a response to another request does not open', async () => {
    const a = await encapsulateRequest(config, fromHex(A.request), { backend });
    const b = await encapsulateRequest(config, fromHex(A.request), { backend });
    const opened = await decapsulateRequest(a.encapsulated, gateway, { backend });
    const res = await encapsulateResponse(opened.context, fromHex(A.response));
    await expectCode(decapsulateResponse(b.context, res), 'decrypt-failed');
  });
  it('an unusable gateway public key is bad-key', async () => {
    for (const publicKey of [new Uint8Array(32), Uint8Array.of(1, ...new Uint8Array(31))]) {
      // Both are low-order points: X25519 with them gives the all-zero secret RFC 9180 §7.1.4 refuses.
      await expectCode(
        encapsulateRequest({ ...config, publicKey }, fromHex(A.request), { backend }),
        'bad-key',
      );
    }
  });
  it('a low-order enc is refused before any AEAD', async () => {
    const bad = enc.slice();
    bad.fill(0, 7, 39);
    await expectCode(decapsulateRequest(bad, gateway, { backend }), 'decrypt-failed');
  });
});

describe('malformed key configurations', () => {
  it('malformed key configurations are refused', async () => {
    const good = fromHex(A.keyConfig);
    await expectCode(() => decodeKeyConfig(good.subarray(0, good.length - 1)), 'bad-key-config');
    await expectCode(() => decodeKeyConfig(concatBytes(good, Uint8Array.of(0))), 'trailing-bytes');
    const kem = good.slice();
    kem[2] = 0x21;
    await expectCode(() => decodeKeyConfig(kem), 'unsupported-kem');
    const odd = good.slice();
    odd[36] = 6;
    await expectCode(() => decodeKeyConfig(odd), 'bad-key-config');
    await expectCode(() => decodeKeyConfigList(fromHex(`002e${A.keyConfig}`)), 'bad-key-config');
    await expectCode(() => selectSuite({ ...config, suites: [{ kdfId: 1, aeadId: 3 }] }), 'unsupported-aead');
  });
});

describe.each(BACKENDS)('fuzz (%s backend)', (_name, backend) => {
  it('mutated encapsulated requests and key configs: never accepted, always an OhttpError', async () => {
    const { OhttpError } = await import('../../src/ohttp/index.js');
    const base = fromHex(A.encRequest);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat({ max: 8 }),
        async (flips, cut) => {
          const b = base.slice();
          for (const [at, x] of flips) b[at % b.length]! ^= x;
          const input = b.subarray(0, b.length - cut);
          // Two flips can cancel out; the unchanged vector is rightly accepted.
          fc.pre(toHex(input) !== A.encRequest);
          await expect(decapsulateRequest(input, gateway, { backend })).rejects.toBeInstanceOf(OhttpError);
          try {
            decodeKeyConfig(input.subarray(0, 41));
          } catch (e) {
            expect(e).toBeInstanceOf(OhttpError);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
