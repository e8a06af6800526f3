/**
 * openSealed: a sealed file's header parsed once, what it says without a key, and everything that
 * needs the key from one unwrap. Refusals: bytes that are not a sealed file or are cut inside the
 * header (at open), a key that does not fit, a tampered header and a truncated or extended body (at
 * unwrap, before any plaintext is released).
 */
import { describe, expect, it } from 'vitest';
import { bytesSource, openSealed, sealBytes } from '../../src/seal/container.js';
import { SealFormatError } from '../../src/seal/format.js';
import { concatBytes } from '../../src/util/bytes.js';
import { hpke, kek, pattern, URI } from './helpers.js';

const CS = 64;

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  await expect(p).rejects.toBeInstanceOf(SealFormatError);
  await expect(p).rejects.toMatchObject({ code });
}

async function readAll(s: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of s as unknown as AsyncIterable<Uint8Array>) parts.push(p);
  return concatBytes(...parts);
}

describe('openSealed', () => {
  const k = kek();
  const pt = pattern(CS * 9 + 5);
  const sealedP = sealBytes(pt, {
    recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
    chunkSize: CS,
    name: 'model.gguf',
  });

  it('tells name, recipients and size without a key', async () => {
    const sealed = await sealedP;
    const f = await openSealed(sealed);
    expect(f.name).toBe('model.gguf');
    expect(f.recipients.map((r) => r.keyId)).toEqual([URI]);
    expect(f.size).toBe(sealed.length);
    expect(f.header.plaintextLength).toBe(pt.length);
  });

  it('gives random access, the whole plaintext and the sealed body from one unwrap', async () => {
    const sealed = await sealedP;
    const f = await (await openSealed(bytesSource(sealed))).unwrap(k);
    expect(f.plaintextLength).toBe(pt.length);
    const reader = await f.reader();
    expect(await reader.read(CS - 3, 3 * CS + 1)).toEqual(pt.subarray(CS - 3, 3 * CS + 1));
    expect(await readAll(f.stream())).toEqual(pt);
    // A second stream starts over: each call reads the body afresh.
    expect(await readAll(f.stream({ inFlight: 1 }))).toEqual(pt);
    expect(await readAll(f.body())).toEqual(sealed.subarray(f.bodyOffset));
  });

  it('opens for an HPKE recipient too', async () => {
    const h = await hpke();
    const sealed = await sealBytes(pt, {
      recipients: [{ type: 'hpke', publicKey: h.publicKey }],
      chunkSize: CS,
    });
    expect(await readAll((await (await openSealed(sealed)).unwrap(h)).stream())).toEqual(pt);
  });

  it('refuses what is not a sealed file, and a file cut inside its header, at open', async () => {
    const sealed = await sealedP;
    await expectCode(openSealed(new Uint8Array(0)), 'not-sealed');
    await expectCode(openSealed(new Uint8Array(40)), 'not-sealed');
    await expectCode(openSealed(sealed.subarray(0, 10)), 'truncated');
    await expectCode(openSealed(sealed.subarray(0, 60)), 'truncated');
  });

  it('refuses a key that does not fit, and a tampered header, at unwrap', async () => {
    const sealed = await sealedP;
    await expectCode((await openSealed(sealed)).unwrap(kek()), 'no-matching-key');
    const tampered = sealed.slice();
    tampered[20 + 7]! ^= 1; // the plaintext length's lowest byte, covered by the MAC
    await expectCode((await openSealed(tampered)).unwrap(k), 'header-tampered');
  });

  it('refuses a truncated or extended body at unwrap, before any plaintext', async () => {
    const sealed = await sealedP;
    await expectCode((await openSealed(sealed.subarray(0, sealed.length - CS - 16))).unwrap(k), 'truncated');
    await expectCode(
      (await openSealed(concatBytes(sealed, new Uint8Array(CS + 16)))).unwrap(k),
      'trailing-data',
    );
  });

  it('a tampered chunk fails the stream', async () => {
    const sealed = (await sealedP).slice();
    sealed[sealed.length - 20]! ^= 1;
    const f = await (await openSealed(sealed)).unwrap(k);
    await expectCode(readAll(f.stream()), 'chunk-tampered');
  });
});
