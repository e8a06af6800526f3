import { createCipheriv } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ChunkAuthError,
  type ChunkBatch,
  type ChunkCipher,
  TAG_BYTES,
  webCryptoCipher,
} from '../../src/seal/aead.js';
import {
  bestChunkCipher,
  chunkCipherBackend,
  nativeAesGcm,
  nativeCipher,
} from '../../src/seal/aead-native.js';
import { nodeCipher } from '../../src/seal/aead-node.js';

// CI sets CLOISTER_REQUIRE_NATIVE=1 where the addon must have been built, so a broken build cannot
// hide behind the silent fallback.
const requireNative = process.env['CLOISTER_REQUIRE_NATIVE'] === '1';
const backends: ChunkCipher[] = [webCryptoCipher, nodeCipher, ...(nativeCipher ? [nativeCipher] : [])];

const bytes = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 17 + 7) & 0xff);
const key = bytes(32, 1);
const noncePrefix = bytes(7, 2);
const aad = bytes(32, 3);

function batch(over: Partial<ChunkBatch> & Pick<ChunkBatch, 'input'>): ChunkBatch {
  return { key, noncePrefix, aad, first: 0, chunkSize: 8, final: true, ...over };
}

async function authIndex(p: () => Uint8Array | Promise<Uint8Array>): Promise<number> {
  try {
    await p();
  } catch (e) {
    if (e instanceof ChunkAuthError) return e.index;
    throw e;
  }
  throw new Error('opened without an authentication error');
}

describe('backend choice', () => {
  it('picks native when built, else node:crypto, and names it', () => {
    if (requireNative) expect(nativeCipher).toBeDefined();
    const best = bestChunkCipher();
    expect(best).toBe(nativeCipher ?? nodeCipher);
    expect(chunkCipherBackend()).toMatch(nativeCipher ? /^native \(OpenSSL 3\./ : /^node$/);
  });
});

describe('every backend agrees', () => {
  // Sizes around chunk boundaries, from the empty file to many chunks.
  const shape = fc
    .record({
      chunkSize: fc.integer({ min: 1, max: 48 }),
      kind: fc.constantFrom('zero', 'one', 'under', 'exact', 'over', 'many', 'any'),
      many: fc.integer({ min: 2, max: 12 }),
      any: fc.integer({ min: 0, max: 400 }),
      final: fc.boolean(),
      aadLen: fc.integer({ min: 0, max: 40 }),
      seed: fc.integer({ min: 0, max: 255 }),
      firstHigh: fc.boolean(),
      firstRaw: fc.integer({ min: 0, max: 0xffffffff }),
    })
    .map((r) => {
      const c = r.chunkSize;
      const len = { zero: 0, one: 1, under: c - 1, exact: c, over: c + 1, many: c * r.many, any: r.any }[
        r.kind
      ];
      const count = Math.max(1, Math.ceil(len / c));
      // Half the runs sit at the top of the 32-bit index space, where wrapping would show.
      const first = r.firstHigh ? 0x100000000 - count : Math.min(r.firstRaw, 0x100000000 - count);
      return { ...r, len, first };
    });

  it('seals to identical bytes and opens each other’s output', async () => {
    await fc.assert(
      fc.asyncProperty(shape, async (s) => {
        const input = bytes(s.len, s.seed);
        const b = batch({
          input,
          chunkSize: s.chunkSize,
          first: s.first,
          final: s.final,
          aad: bytes(s.aadLen, 9),
        });
        const sealed = await Promise.all(backends.map((c) => c.seal(b)));
        const count = Math.max(1, Math.ceil(s.len / s.chunkSize));
        expect(sealed[0]!.length).toBe(s.len + count * TAG_BYTES);
        for (const out of sealed) expect(out).toEqual(sealed[0]);
        for (const opener of backends) {
          const plain = await opener.open({ ...b, input: sealed[0]! });
          expect(plain).toEqual(input);
          // Writing into a caller's buffer gives the same bytes.
          const into = new Uint8Array(s.len);
          await opener.open({ ...b, input: sealed[0]!, output: into });
          expect(into).toEqual(input);
        }
      }),
      { numRuns: 150 },
    );
  });

  it('follows the nonce layout prefix ‖ u32be(index) ‖ last flag', async () => {
    // Two chunks at indices 5 and 6, the second final, sealed by hand with spelled-out nonces so that
    // all backends drifting together (say, a changed nonce layout) cannot pass.
    const input = bytes(12, 4);
    const hex = Buffer.from(noncePrefix).toString('hex');
    const expected = Buffer.concat(
      [
        [input.subarray(0, 8), `${hex}0000000500`],
        [input.subarray(8), `${hex}0000000601`],
      ].flatMap(([pt, iv]) => {
        const c = createCipheriv('aes-256-gcm', key, Buffer.from(iv as string, 'hex'));
        c.setAAD(aad);
        return [c.update(pt as Uint8Array), c.final(), c.getAuthTag()];
      }),
    );
    for (const c of backends) {
      expect(Buffer.from(await c.seal(batch({ input, first: 5, final: true })))).toEqual(expected);
    }
  });
});

describe('every backend refuses tampering with the right chunk index', () => {
  const chunkSize = 8;
  const first = 1000;
  const input = bytes(3 * chunkSize - 3, 5); // three chunks, the last one short
  const stride = chunkSize + TAG_BYTES;

  for (const c of backends) {
    describe(c.name, () => {
      const b = batch({ input, chunkSize, first });

      it('every flipped byte', async () => {
        const sealed = await c.seal(b);
        for (let pos = 0; pos < sealed.length; pos++) {
          const bad = sealed.slice();
          bad[pos]! ^= 0x01;
          expect(await authIndex(() => c.open({ ...b, input: bad }))).toBe(first + Math.floor(pos / stride));
        }
      });

      it('wrong AAD, index, final flag, key; truncation; swapped chunks', async () => {
        const sealed = await c.seal(b);
        expect(await authIndex(() => c.open({ ...b, input: sealed, aad: bytes(32, 4) }))).toBe(first);
        expect(await authIndex(() => c.open({ ...b, input: sealed, aad: new Uint8Array(0) }))).toBe(first);
        expect(await authIndex(() => c.open({ ...b, input: sealed, first: first + 1 }))).toBe(first + 1);
        expect(await authIndex(() => c.open({ ...b, input: sealed, final: false }))).toBe(first + 2);
        expect(await authIndex(() => c.open({ ...b, input: sealed, key: bytes(32, 8) }))).toBe(first);
        expect(await authIndex(() => c.open({ ...b, input: sealed, noncePrefix: bytes(7, 9) }))).toBe(first);
        // Dropping the final chunk: the new last chunk was not sealed as final.
        expect(await authIndex(() => c.open({ ...b, input: sealed.subarray(0, 2 * stride) }))).toBe(
          first + 1,
        );
        // A last piece shorter than a tag is a truncated chunk.
        expect(await authIndex(() => c.open({ ...b, input: sealed.subarray(0, 2 * stride + 5) }))).toBe(
          first + 2,
        );
        const swapped = new Uint8Array(sealed);
        swapped.set(sealed.subarray(stride, 2 * stride), 0);
        swapped.set(sealed.subarray(0, stride), stride);
        expect(await authIndex(() => c.open({ ...b, input: swapped }))).toBe(first);
        // Shorter than one tag: no chunk can be located at all.
        expect(await authIndex(() => c.open({ ...b, input: sealed.subarray(0, 10) }))).toBe(-1);
      });
    });
  }

  for (const c of backends.filter((x) => x !== webCryptoCipher)) {
    it(`${c.name} leaves no unauthenticated plaintext in the output`, async () => {
      const b = batch({ input, chunkSize, first });
      const sealed = await c.seal(b);
      const bad = sealed.slice();
      bad[2 * stride + 1]! ^= 0x80; // the last chunk fails after two good ones were written
      const out = new Uint8Array(input.length).fill(0xaa);
      await expect(Promise.resolve().then(() => c.open({ ...b, input: bad, output: out }))).rejects.toThrow(
        ChunkAuthError,
      );
      expect(out.every((x) => x === 0)).toBe(true);
    });
  }
});

describe('argument checks', () => {
  const input = bytes(20, 6);
  for (const c of [nodeCipher, ...(nativeCipher ? [nativeCipher] : [])]) {
    it(`${c.name}: wrong lengths are a TypeError, numbers out of range a RangeError`, () => {
      const b = batch({ input });
      expect(() => c.seal({ ...b, key: bytes(31, 1) })).toThrow(TypeError);
      expect(() => c.seal({ ...b, noncePrefix: bytes(8, 1) })).toThrow(TypeError);
      expect(() => c.seal({ ...b, output: new Uint8Array(20 + 3 * TAG_BYTES - 1) })).toThrow(TypeError);
      expect(() => c.open({ ...b, input: bytes(40, 1), output: new Uint8Array(9) })).toThrow(TypeError);
      expect(() => c.seal({ ...b, chunkSize: 0 })).toThrow(RangeError);
      expect(() => c.seal({ ...b, chunkSize: 1.5 })).toThrow(RangeError);
      expect(() => c.seal({ ...b, first: 0xffffffff - 1 })).toThrow(RangeError); // 3 chunks would wrap
      expect(() => c.seal({ ...b, first: -1 })).toThrow(RangeError);
    });
  }
});

describe.skipIf(!nativeAesGcm)('native addon bounds checks', () => {
  const A = nativeAesGcm!;
  const k = key;
  const p = noncePrefix;
  const a = aad;
  const input = bytes(20, 7);
  const out = () => new Uint8Array(20 + 3 * TAG_BYTES);

  it('refuses bad buffers with a TypeError', () => {
    expect(() =>
      A.seal(new Uint16Array(16) as unknown as Uint8Array, p, a, 0, 8, true, input, out()),
    ).toThrow(TypeError);
    expect(() => A.seal(k.buffer as unknown as Uint8Array, p, a, 0, 8, true, input, out())).toThrow(
      TypeError,
    );
    expect(() => A.seal(k, 'abcdefg' as unknown as Uint8Array, a, 0, 8, true, input, out())).toThrow(
      TypeError,
    );
    expect(() => A.seal(k, p, a, 0, 8, true, input, new Uint8Array(20 + 3 * TAG_BYTES + 1))).toThrow(
      TypeError,
    );
    expect(() => A.open(k, p, a, 0, 8, true, bytes(15, 1), new Uint8Array(0))).toThrow(TypeError);
    expect(() => A.open(k, p, a, 0, 8, true, bytes(72, 1), new Uint8Array(25))).toThrow(TypeError);
    expect(() => A.seal(k, p, a, 0, 8, 1 as unknown as boolean, input, out())).toThrow(TypeError);
    expect(() => (A.seal as (...x: unknown[]) => number)(k, p, a, 0, 8, true, input)).toThrow(TypeError);
    // Output overlapping input (same buffer) could read bytes it has just overwritten.
    const shared = new Uint8Array(200);
    expect(() => A.seal(k, p, a, 0, 8, true, shared.subarray(0, 20), shared.subarray(10, 78))).toThrow(
      TypeError,
    );
  });

  it('refuses out-of-range numbers with a RangeError', () => {
    for (const chunk of [0, -1, 1.5, Number.NaN, 2 ** 30 + 1, Number.POSITIVE_INFINITY]) {
      expect(() => A.seal(k, p, a, 0, chunk, true, input, out())).toThrow(RangeError);
    }
    for (const first of [-1, 0.5, 2 ** 32, 2 ** 53, 0xffffffff - 1]) {
      expect(() => A.seal(k, p, a, first, 8, true, input, out())).toThrow(RangeError);
    }
  });

  it('random arguments: a TypeError/RangeError or a result, never a crash', () => {
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 80 }),
      fc.integer({ min: -5, max: 100 }),
      fc.double(),
      fc.boolean(),
      fc.constant(undefined),
      fc.string({ maxLength: 8 }),
    );
    fc.assert(
      fc.property(fc.array(arb, { minLength: 0, maxLength: 9 }), fc.boolean(), (args, sealing) => {
        const fn = (sealing ? A.seal : A.open) as (...x: unknown[]) => number;
        try {
          const r = fn(...args);
          expect(Number.isInteger(r) && r >= -1).toBe(true);
        } catch (e) {
          expect(e instanceof TypeError || e instanceof RangeError).toBe(true);
        }
      }),
      { numRuns: 200 },
    );
  });
});
