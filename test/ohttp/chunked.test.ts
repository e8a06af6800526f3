import { describe, expect, it } from 'vitest';
import {
  CHUNKED_RESPONSE_LABEL,
  ChunkedRequestOpener,
  ChunkedRequestSealer,
  ChunkedResponseOpener,
  ChunkedResponseSealer,
  decapsulateRequest,
  decodeKeyConfig,
  decodeRequest,
  deriveResponseKeys,
  type ExchangeContext,
  encapsulateRequest,
  type GatewayKey,
  type OhttpBackend,
} from '../../src/ohttp/index.js';
import { concatBytes, fromHex, toHex, utf8 } from '../../src/util/bytes.js';
import { BACKENDS, expectCode } from './helpers.js';

const config = decodeKeyConfig(
  fromHex('01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003'),
);
const gateway: GatewayKey[] = [
  { config, privateKey: fromHex('3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a') },
];

async function exchange(
  backend: OhttpBackend,
): Promise<{ client: ExchangeContext; server: ExchangeContext }> {
  const { encapsulated, context } = await encapsulateRequest(config, utf8.encode('prompt'), { backend });
  const opened = await decapsulateRequest(encapsulated, gateway, { backend });
  return { client: context, server: opened.context };
}

/** Seals `parts` (the last one final) and returns the header and each framed chunk. */
async function stream(server: ExchangeContext, parts: string[]): Promise<Uint8Array[]> {
  const sealer = await ChunkedResponseSealer.create(server);
  const out = [sealer.header];
  for (let i = 0; i < parts.length; i++)
    out.push(await sealer.seal(utf8.encode(parts[i]!), i === parts.length - 1));
  return out;
}

async function readAll(client: ExchangeContext, pieces: Uint8Array[]): Promise<string[]> {
  const opener = new ChunkedResponseOpener(client);
  const out: Uint8Array[] = [];
  for (const p of pieces) out.push(...(await opener.push(p)));
  out.push(await opener.end());
  return out.map((b) => utf8.decode(b));
}

describe.each(BACKENDS)('chunked OHTTP responses (%s backend)', (_name, backend) => {
  it('streams tokens and reads them back, whatever the network split', async () => {
    const { client, server } = await exchange(backend);
    const parts = ['Hel', 'lo', ' world', '!', ''];
    const framed = await stream(server, parts);
    expect(await readAll(client, framed)).toEqual(parts);
    const whole = concatBytes(...framed);
    const bytewise = Array.from(whole, (b) => Uint8Array.of(b));
    expect(await readAll(client, bytewise)).toEqual(parts);
    expect(await readAll(client, [whole])).toEqual(parts);
  });

  it('refuses a stream cut before the final chunk', async () => {
    const { client, server } = await exchange(backend);
    const framed = await stream(server, ['a', 'b', 'c']);
    await expectCode(readAll(client, framed.slice(0, 3)), 'chunk-truncated');
    await expectCode(readAll(client, [framed[0]!.subarray(0, 5)]), 'chunk-truncated');
    // Cutting inside the final chunk breaks its tag.
    const last = framed[3]!;
    await expectCode(
      readAll(client, [...framed.slice(0, 3), last.subarray(0, last.length - 1)]),
      'decrypt-failed',
    );
  });

  it('refuses reordered chunks', async () => {
    const { client, server } = await exchange(backend);
    const [h, a, b, c] = await stream(server, ['a', 'b', 'c']);
    await expectCode(readAll(client, [h!, b!, a!, c!]), 'decrypt-failed');
  });

  it('refuses a middle chunk passed off as the final one', async () => {
    const { client, server } = await exchange(backend);
    const [h, a, b] = await stream(server, ['a', 'b', 'c']);
    // Re-frame chunk b (non-final AAD) with the final marker.
    const asFinal = concatBytes(Uint8Array.of(0), b!.subarray(1));
    await expectCode(readAll(client, [h!, a!, asFinal]), 'decrypt-failed');
  });

  it('refuses a flipped byte anywhere, and a stream for another request', async () => {
    const { client, server } = await exchange(backend);
    const whole = concatBytes(...(await stream(server, ['token', 'stream'])));
    for (let i = 0; i < whole.length; i++) {
      const bad = whole.slice();
      bad[i]! ^= 0x80;
      let err: unknown;
      try {
        await readAll(client, [bad]);
      } catch (e) {
        err = e;
      }
      expect(err, `flip at ${i}`).toBeDefined();
    }
    const other = await exchange(backend);
    await expectCode(readAll(other.client, [whole]), 'decrypt-failed');
  });

  it('never seals, and refuses to open, an empty non-final chunk (the draft: a decryption error)', async () => {
    const { client, server } = await exchange(backend);
    const sealer = await ChunkedResponseSealer.create(server);
    await expectCode(sealer.seal(new Uint8Array(0)), 'bad-message');
    // An empty plaintext sealed by hand, framed as a non-final chunk.
    const keys = await deriveResponseKeys(server, sealer.header, CHUNKED_RESPONSE_LABEL);
    const empty = await keys.key.seal(keys.nonce, new Uint8Array(0), new Uint8Array(0));
    const opener = new ChunkedResponseOpener(client);
    await expectCode(opener.push(concatBytes(sealer.header, Uint8Array.of(16), empty)), 'decrypt-failed');
  });

  it('refuses sealing after the final chunk', async () => {
    const { server } = await exchange(backend);
    const sealer = await ChunkedResponseSealer.create(server);
    await sealer.seal(utf8.encode('x'), true);
    await expectCode(sealer.seal(utf8.encode('y')), 'bad-message');
  });

  it('reassembles long chunks that arrive a few bytes at a time', async () => {
    const { client, server } = await exchange(backend);
    const sealer = await ChunkedResponseSealer.create(server);
    const big = Uint8Array.from({ length: 20_000 }, (_, i) => (i * 7) & 0xff);
    const whole = concatBytes(
      sealer.header,
      await sealer.seal(Uint8Array.of(1)),
      await sealer.seal(big),
      await sealer.seal(big.subarray(3), true),
    );
    const opener = new ChunkedResponseOpener(client);
    const got: Uint8Array[] = [];
    for (let at = 0, step = 1; at < whole.length; at += step, step = (step % 13) + 1) {
      got.push(...(await opener.push(whole.subarray(at, at + step))));
    }
    got.push(await opener.end());
    expect(got).toEqual([Uint8Array.of(1), big, big.subarray(3)]);
  });

  it('refuses bytes after the end and a chunk length shorter than a tag', async () => {
    const { client, server } = await exchange(backend);
    const framed = await stream(server, ['a']);
    const opener = new ChunkedResponseOpener(client);
    for (const f of framed) await opener.push(f);
    await opener.end();
    await expectCode(opener.push(Uint8Array.of(0)), 'trailing-bytes');
    await expectCode(opener.end(), 'bad-message');
    const short = new ChunkedResponseOpener(client);
    await expectCode(short.push(concatBytes(framed[0]!, Uint8Array.of(15))), 'bad-message');
  });
});

/** draft-ietf-ohai-chunked-ohttp-08 Appendix A, one request and response exchange (hex from the draft). */
const D = {
  skR: '1c190d72acdbe4dbc69e680503bb781a932c70a12c8f3754434c67d8640d8698',
  keyConfig: '010020668eb21aace159803974a4c67f08b4152d29bed10735fd08f98ccdd6fe09570800080001000100010003',
  request: '00034745540568747470730b6578616d706c652e636f6d012f',
  skE: 'b26d565f3f875ed480d1abced3d665159650c99174fd0b124ac4bda0c64ae324',
  pkE: '8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032',
  // header, enc, then three chunks: 12 bytes of the request, the other 13, and an empty final chunk.
  encapsulatedRequest: [
    '01002000010001',
    '8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032',
    '1c2ad24942d4d692563012f2980c8fef437a336b9b2fc938ef77a5834f',
    '1d2e33d8fd25577afe31bd1c79d094f76b6250ae6549b473ecd950501311',
    '001c6c1395d0ef7c1022297966307b8a7f',
  ],
  response: '0140c8',
  responseNonce: 'bcce7f4cb921309ba5d62edf1769ef09',
  // nonce, then chunks of one byte, two bytes and an empty final chunk.
  encapsulatedResponse: [
    'bcce7f4cb921309ba5d62edf1769ef09',
    '1179bf1cc87fa0e2c02de4546945aa3d1e48',
    '12b348b5bd4c594c16b6170b07b475845d1f32',
    '00ed9d8a796617a5b27265f4d73247f639',
  ],
};
const draftConfig = decodeKeyConfig(fromHex(D.keyConfig));
const draftGateway: GatewayKey[] = [{ config: draftConfig, privateKey: fromHex(D.skR) }];
const draftRequest = fromHex(D.encapsulatedRequest.join(''));
const draftResponse = fromHex(D.encapsulatedResponse.join(''));

async function openRequest(
  pieces: Uint8Array[],
  backend: OhttpBackend,
  keys: GatewayKey[] = draftGateway,
): Promise<{ request: Uint8Array; context: ExchangeContext }> {
  const opener = new ChunkedRequestOpener(keys, { backend });
  const out: Uint8Array[] = [];
  for (const p of pieces) out.push(...(await opener.push(p)));
  out.push(await opener.end());
  return { request: concatBytes(...out), context: opener.context! };
}

describe.each(BACKENDS)(
  'draft-ietf-ohai-chunked-ohttp Appendix A known answers (%s backend)',
  (_name, backend) => {
    it('client: with the fixed ephemeral key, the chunked request is exact', async () => {
      const sealer = await ChunkedRequestSealer.create(draftConfig, {
        backend,
        ephemeral: { privateKey: fromHex(D.skE), publicKey: fromHex(D.pkE) },
      });
      const req = fromHex(D.request);
      const out = [
        sealer.header,
        await sealer.seal(req.subarray(0, 12)),
        await sealer.seal(req.subarray(12)),
        await sealer.seal(new Uint8Array(0), true),
      ];
      expect(toHex(concatBytes(...out))).toBe(D.encapsulatedRequest.join(''));
    });

    it('gateway: opens the published chunked request in any split; with the fixed nonce the response is exact', async () => {
      const whole = await openRequest([draftRequest], backend);
      expect(toHex(whole.request)).toBe(D.request);
      expect(decodeRequest(whole.request)).toMatchObject({
        method: 'GET',
        scheme: 'https',
        authority: 'example.com',
        path: '/',
      });
      const bytewise = await openRequest(
        Array.from(draftRequest, (b) => Uint8Array.of(b)),
        backend,
      );
      expect(toHex(bytewise.request)).toBe(D.request);

      const sealer = await ChunkedResponseSealer.create(whole.context, fromHex(D.responseNonce));
      const res = fromHex(D.response);
      const out = [
        sealer.header,
        await sealer.seal(res.subarray(0, 1)),
        await sealer.seal(res.subarray(1)),
        await sealer.seal(new Uint8Array(0), true),
      ];
      expect(toHex(concatBytes(...out))).toBe(D.encapsulatedResponse.join(''));
    });

    it('client: opens the published chunked response', async () => {
      const sealer = await ChunkedRequestSealer.create(draftConfig, {
        backend,
        ephemeral: { privateKey: fromHex(D.skE), publicKey: fromHex(D.pkE) },
      });
      const opener = new ChunkedResponseOpener(sealer.context);
      const got = [...(await opener.push(draftResponse)), await opener.end()];
      expect(got.map(toHex)).toEqual(['01', '40c8', '']);
    });
  },
);

describe.each(BACKENDS)('chunked OHTTP requests (%s backend)', (_name, backend) => {
  /** The published request's header and enc, and its three framed chunks. */
  const prefix = fromHex(D.encapsulatedRequest.slice(0, 2).join(''));
  const [c1, c2, fin] = D.encapsulatedRequest.slice(2).map(fromHex) as [Uint8Array, Uint8Array, Uint8Array];

  it('round-trips a request of many chunks, sealed here', async () => {
    const sealer = await ChunkedRequestSealer.create(config, { backend });
    const parts = ['{"model":', '"x","stream"', ':true}'].map((p) => utf8.encode(p));
    const framed = [sealer.header];
    for (let i = 0; i < parts.length; i++) framed.push(await sealer.seal(parts[i]!, i === parts.length - 1));
    const opened = await openRequest([concatBytes(...framed)], backend, gateway);
    expect(utf8.decode(opened.request)).toBe('{"model":"x","stream":true}');
    expect(opened.context.enc).toEqual(sealer.context.enc);
  });

  it('refuses reordered, re-framed, truncated and tampered requests', async () => {
    await expectCode(openRequest([prefix, c2, c1, fin], backend), 'decrypt-failed');
    // A middle chunk framed as the final one, and the final one framed as a middle one.
    await expectCode(
      openRequest([prefix, c1, concatBytes(Uint8Array.of(0), c2.subarray(1))], backend),
      'decrypt-failed',
    );
    await expectCode(
      openRequest([prefix, c1, c2, Uint8Array.of(16), fin.subarray(1)], backend),
      'decrypt-failed',
    );
    await expectCode(openRequest([prefix, c1, c2], backend), 'chunk-truncated');
    await expectCode(openRequest([prefix.subarray(0, 20)], backend), 'chunk-truncated');
    const flipped = fin.slice();
    flipped[5]! ^= 1;
    await expectCode(openRequest([prefix, c1, c2, flipped], backend), 'decrypt-failed');
  });

  it('refuses an empty non-final chunk, an unknown key and an unusable enc', async () => {
    const sealer = await ChunkedRequestSealer.create(config, { backend });
    await expectCode(sealer.seal(new Uint8Array(0)), 'bad-message');
    const wrongKey = prefix.slice();
    wrongKey[0] = 9;
    await expectCode(openRequest([wrongKey, c1, c2, fin], backend), 'unknown-key-id');
    const lowOrder = prefix.slice();
    lowOrder.fill(0, 7);
    await expectCode(openRequest([lowOrder, c1, c2, fin], backend), 'decrypt-failed');
  });

  it('a chunked request does not open as a plain one, nor the other way round (distinct labels)', async () => {
    await expectCode(
      decapsulateRequest(concatBytes(prefix, c1.subarray(1)), draftGateway, { backend }),
      'decrypt-failed',
    );
    const plain = await encapsulateRequest(draftConfig, utf8.encode('x'), { backend });
    const asChunked = concatBytes(
      plain.encapsulated.subarray(0, 39),
      Uint8Array.of(0),
      plain.encapsulated.subarray(39),
    );
    await expectCode(openRequest([asChunked], backend), 'decrypt-failed');
  });
});
