import { describe, expect, it } from 'vitest';
import {
  ChunkedResponseOpener,
  ChunkedResponseSealer,
  decapsulateRequest,
  decodeKeyConfig,
  type ExchangeContext,
  encapsulateRequest,
  type GatewayKey,
  type OhttpBackend,
} from '../../src/ohttp/index.js';
import { concatBytes, fromHex, utf8 } from '../../src/util/bytes.js';
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
    const parts = ['Hel', 'lo', '', ' world', '!'];
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
