import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  AEAD_AES_128_GCM,
  AEAD_AES_256_GCM,
  ChunkedResponseOpener,
  ChunkedResponseSealer,
  decapsulateRequest,
  decapsulateResponse,
  encapsulateRequest,
  encapsulateResponse,
  type GatewayKey,
  generateGatewayKey,
  KDF_HKDF_SHA256,
  webCryptoBackend,
} from '../../src/ohttp/index.js';
import { nodeBackend } from '../../src/ohttp/node.js';
import { concatBytes, toHex, utf8 } from '../../src/util/bytes.js';
import { BACKENDS, counting, expectCode } from './helpers.js';

const PAIRS = BACKENDS.flatMap(([c, client]) =>
  BACKENDS.map(([g, gateway]) => [`${c} client, ${g} gateway`, client, gateway] as const),
);

const keys: GatewayKey[] = await Promise.all(
  [AEAD_AES_128_GCM, AEAD_AES_256_GCM].map((aeadId, i) =>
    generateGatewayKey(i + 1, [{ kdfId: KDF_HKDF_SHA256, aeadId }]),
  ),
);

/** Splits `bytes` at the given fractions of its length. */
function split(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const to of [...at, bytes.length]) {
    out.push(bytes.subarray(from, to));
    from = to;
  }
  return out;
}

describe.each(PAIRS)('%s', (_name, client, gateway) => {
  it('requests and whole responses, AES-128-GCM and AES-256-GCM', async () => {
    for (const key of keys) {
      const request = utf8.encode(`prompt for key ${key.config.keyId}`);
      const sent = await encapsulateRequest(key.config, request, { backend: client });
      const opened = await decapsulateRequest(sent.encapsulated, keys, { backend: gateway });
      expect(opened.request).toEqual(request);
      const res = await encapsulateResponse(opened.context, utf8.encode('answer'));
      expect(utf8.decode(await decapsulateResponse(sent.context, res))).toBe('answer');
      const tampered = res.slice();
      tampered[res.length - 1]! ^= 1;
      await expectCode(decapsulateResponse(sent.context, tampered), 'decrypt-failed');
    }
  });

  it('chunked responses, whatever the split', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...keys),
        // Non-final chunks carry data (the draft); the final one may be empty.
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 600 }), { maxLength: 5 }),
        fc.uint8Array({ maxLength: 600 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 }),
        async (key, middle, last, cuts) => {
          const parts = [...middle, last];
          const sent = await encapsulateRequest(key.config, utf8.encode('p'), { backend: client });
          const opened = await decapsulateRequest(sent.encapsulated, keys, { backend: gateway });
          const sealer = await ChunkedResponseSealer.create(opened.context);
          const framed = [sealer.header];
          for (let i = 0; i < parts.length; i++)
            framed.push(await sealer.seal(parts[i]!, i === parts.length - 1));
          const opener = new ChunkedResponseOpener(sent.context);
          const got: Uint8Array[] = [];
          for (const piece of split(concatBytes(...framed), cuts)) got.push(...(await opener.push(piece)));
          got.push(await opener.end());
          expect(got.map(toHex)).toEqual(parts.map(toHex));
        },
      ),
      { numRuns: 25 },
    );
  });
});

describe('choosing the backend for a response', () => {
  it('an explicit backend, the recorded one and the default all give the same bytes', async () => {
    const key = keys[0]!;
    const sent = await encapsulateRequest(key.config, utf8.encode('p'), { backend: nodeBackend });
    const { context } = await decapsulateRequest(sent.encapsulated, keys, { backend: nodeBackend });
    const nonce = new Uint8Array(16).fill(7);
    const recorded = await encapsulateResponse(context, utf8.encode('x'), nonce);
    const web = await encapsulateResponse(context, utf8.encode('x'), nonce, { backend: webCryptoBackend });
    const { backend: _, ...bare } = context;
    const defaulted = await encapsulateResponse(bare, utf8.encode('x'), nonce);
    expect(toHex(web)).toBe(toHex(recorded));
    expect(toHex(defaulted)).toBe(toHex(recorded));
    expect(
      utf8.decode(await decapsulateResponse(sent.context, recorded, { backend: webCryptoBackend })),
    ).toBe('x');
  });

  it('each function uses the backend it is given, and the response side the one recorded', async () => {
    const client = counting(nodeBackend);
    const gateway = counting(nodeBackend);
    const key = keys[1]!;
    const sent = await encapsulateRequest(key.config, utf8.encode('p'), { backend: client.backend });
    expect(client.calls).toEqual({ setupSender: 1 });
    const { context } = await decapsulateRequest(sent.encapsulated, keys, { backend: gateway.backend });
    expect(gateway.calls).toEqual({ setupRecipient: 1 });
    const sealer = await ChunkedResponseSealer.create(context);
    const framed = concatBytes(sealer.header, await sealer.seal(utf8.encode('last'), true));
    expect(gateway.calls).toEqual({ setupRecipient: 1, extract: 1, expand: 2, aeadKey: 1 });
    const opener = new ChunkedResponseOpener(sent.context);
    await opener.push(framed);
    expect(utf8.decode(await opener.end())).toBe('last');
    expect(client.calls).toEqual({ setupSender: 1, extract: 1, expand: 2, aeadKey: 1 });
  });
});
