import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  beginSeal,
  bytesSource,
  openBytes,
  openReader,
  sealBytes,
  sealParts,
  sealStream,
} from '../../src/seal/container.js';
import { SealFormatError } from '../../src/seal/format.js';
import { bs, concatBytes } from '../../src/util/bytes.js';
import { hpke, kek, pattern, URI } from './helpers.js';

const CS = 64; // small chunks make multi-chunk cases cheap

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  await expect(p).rejects.toBeInstanceOf(SealFormatError);
  await expect(p).rejects.toMatchObject({ code });
}

describe('round trips', () => {
  const k = kek();
  for (const n of [0, 1, CS - 1, CS, CS + 1, 10 * CS, 10 * CS + 7]) {
    it(`${n} bytes`, async () => {
      const pt = pattern(n, n + 1);
      const sealed = await sealBytes(pt, {
        recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
        chunkSize: CS,
      });
      expect(await openBytes(sealed, k)).toEqual(pt);
    });
  }

  it('uses the default 1 MiB chunk size across a chunk boundary', async () => {
    const pt = pattern(1024 * 1024 + 3);
    const sealed = await sealBytes(pt, { recipients: [{ type: 'kbs', uri: URI, kek: k.secret }] });
    const hl = new DataView(sealed.buffer).getUint32(12);
    expect(sealed.length).toBe(hl + pt.length + 2 * 16);
    expect(Buffer.from(await openBytes(sealed, k)).equals(pt)).toBe(true);
  });

  it('opens with any of several recipients, and refuses a key that is not one of them', async () => {
    const a = kek('kbs:///a/b/c');
    const h = await hpke();
    const other = await hpke();
    const pt = pattern(300);
    const sealed = await sealBytes(pt, {
      recipients: [
        { type: 'kbs', uri: 'kbs:///a/b/c', kek: a.secret },
        { type: 'hpke', publicKey: h.publicKey },
      ],
      chunkSize: CS,
    });
    expect(await openBytes(sealed, a)).toEqual(pt);
    expect(await openBytes(sealed, h)).toEqual(pt);
    await expectCode(openBytes(sealed, other), 'no-matching-key');
    await expectCode(openBytes(sealed, kek()), 'no-matching-key');
  });
});

describe('sealParts', () => {
  const k = kek();
  const MiB = 1024 * 1024;
  // 64 KiB chunks: a batch (4 MiB) is 64 chunks, so straddling batches stay cheap with Web Crypto.
  const opts = {
    recipients: [{ type: 'kbs' as const, uri: URI, kek: k.secret }],
    chunkSize: 64 * 1024,
    name: 'ckpt-000001',
    deterministic: { dataKey: pattern(32, 9), noncePrefix: pattern(7, 10) },
  };
  const layouts: [string, number[]][] = [
    ['nothing', []],
    ['empty parts', [0, 0]],
    ['one small part', [300]],
    ['a head and a state straddling batches', [300, 8 * MiB + 5]],
    ['exactly one batch', [4 * MiB]],
    ['exactly two batches, split at the batch', [4 * MiB, 4 * MiB]],
    ['parts straddling every batch', [3 * MiB, 2 * MiB, 0, 3 * MiB + 1]],
  ];
  for (const [what, sizes] of layouts) {
    it(`gives sealBytes' bytes: ${what}`, async () => {
      const parts = sizes.map((n, i) => pattern(n, i + 2));
      const whole = concatBytes(...parts);
      const ctx = await beginSeal({ ...opts, plaintextLength: whole.length });
      const pieces: Uint8Array[] = [];
      for await (const p of sealParts(ctx, parts)) pieces.push(p);
      const sealed = concatBytes(...pieces);
      expect(Buffer.from(sealed).equals(await sealBytes(whole, opts))).toBe(true);
      expect(Buffer.from(await openBytes(sealed, k)).equals(whole)).toBe(true);
      // The caller's parts are read, never changed (only a straddling batch's own copy is zeroed).
      expect(parts.map((p, i) => Buffer.from(p).equals(pattern(sizes[i]!, i + 2)))).not.toContain(false);
    });
  }

  it('refuses parts that do not add up to the declared length', async () => {
    const ctx = await beginSeal({ ...opts, plaintextLength: 10 });
    const drain = async () => {
      for await (const _ of sealParts(ctx, [pattern(4), pattern(5)])) {
        // nothing: the refusal comes first
      }
    };
    await expectCode(drain(), 'range');
  });
});

describe('tampering', () => {
  const k = kek();
  const seal = (pt: Uint8Array, cs = CS) =>
    sealBytes(pt, { recipients: [{ type: 'kbs', uri: URI, kek: k.secret }], chunkSize: cs, name: 'm.gguf' });

  async function parts(n = 5 * CS) {
    const pt = pattern(n);
    const sealed = await seal(pt);
    const hl = new DataView(sealed.buffer).getUint32(12);
    return { pt, sealed, hl, stride: CS + 16 };
  }

  it('detects a header edit before releasing plaintext', async () => {
    const { sealed } = await parts();
    const bad = sealed.slice();
    bad[sealed.indexOf(0x6d, 36)] ^= 1; // a byte of the original name
    await expectCode(openBytes(bad, k), 'header-tampered');
  });

  it('detects truncation at a chunk boundary and inside a chunk', async () => {
    const { sealed, hl, stride } = await parts();
    await expectCode(openBytes(sealed.subarray(0, hl + 2 * stride), k), 'truncated');
    await expectCode(openBytes(sealed.subarray(0, sealed.length - 1), k), 'truncated');
    await expectCode(openBytes(sealed.subarray(0, 20), k), 'truncated');
  });

  it('detects truncation at a chunk boundary when the length is not declared (sealed from a pipe)', async () => {
    const pt = pattern(5 * CS);
    const ctx = await beginSeal({ recipients: [{ type: 'kbs', uri: URI, kek: k.secret }], chunkSize: CS });
    expect(ctx.header.plaintextLength).toBeUndefined();
    const sealed = new Uint8Array(
      await new Response(new Blob([bs(pt)]).stream().pipeThrough(sealStream(ctx))).arrayBuffer(),
    );
    expect(await openBytes(sealed, k)).toEqual(pt);
    const hl = ctx.header.headerLength;
    for (const chunks of [1, 2, 4]) {
      await expectCode(openBytes(sealed.subarray(0, hl + chunks * (CS + 16)), k), 'chunk-tampered');
    }
  });

  it('detects extension and concatenation', async () => {
    const { sealed } = await parts();
    const ext = new Uint8Array(sealed.length + 32);
    ext.set(sealed);
    await expectCode(openBytes(ext, k), 'trailing-data');
  });

  it('detects reordered and duplicated chunks', async () => {
    const { sealed, hl, stride } = await parts();
    const swapped = sealed.slice();
    swapped.set(sealed.subarray(hl, hl + stride), hl + stride);
    swapped.set(sealed.subarray(hl + stride, hl + 2 * stride), hl);
    await expectCode(openBytes(swapped, k), 'chunk-tampered');
    const dup = sealed.slice();
    dup.set(sealed.subarray(hl, hl + stride), hl + stride);
    await expectCode(openBytes(dup, k), 'chunk-tampered');
  });

  it('detects chunks swapped between two files sealed under the same key', async () => {
    const a = await parts();
    const b = await seal(pattern(5 * CS, 99));
    const spliced = a.sealed.slice();
    spliced.set(b.subarray(a.hl + a.stride, a.hl + 2 * a.stride), a.hl + a.stride);
    await expectCode(openBytes(spliced, k), 'chunk-tampered');
  });

  it('detects a flipped ciphertext or tag bit in any chunk', async () => {
    const { sealed, hl } = await parts(3 * CS + 5);
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: hl, max: sealed.length - 1 }),
        fc.integer({ min: 0, max: 7 }),
        async (at, bit) => {
          const bad = sealed.slice();
          bad[at] ^= 1 << bit;
          await expectCode(openBytes(bad, k), 'chunk-tampered');
        },
      ),
      { numRuns: 40 },
    );
  });

  it('rejects non-sealed input and unknown versions with their own codes', async () => {
    await expectCode(openBytes(new Uint8Array(0), k), 'not-sealed');
    await expectCode(openBytes(pattern(200), k), 'not-sealed');
    const { sealed } = await parts();
    const v2 = sealed.slice();
    v2[9] = 2;
    await expectCode(openBytes(v2, k), 'unsupported-version');
  });
});

describe('random access', () => {
  it('returns exactly the bytes of any range (property)', async () => {
    const k = kek();
    const pt = pattern(CS * 7 + 13);
    const sealed = await sealBytes(pt, {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: CS,
    });
    const reader = await openReader(bytesSource(sealed), k);
    expect(reader.plaintextLength).toBe(pt.length);
    await fc.assert(
      fc.asyncProperty(fc.nat(pt.length), fc.nat(pt.length), async (x, y) => {
        const [a, b] = x <= y ? [x, y] : [y, x];
        expect(await reader.read(a, b)).toEqual(pt.subarray(a, b));
      }),
      { numRuns: 150 },
    );
    await expect(reader.read(0, pt.length + 1)).rejects.toMatchObject({ code: 'range' });
  });

  it('refuses to open a truncated file for random access', async () => {
    const k = kek();
    const sealed = await sealBytes(pattern(CS * 4), {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: CS,
    });
    await expectCode(openReader(bytesSource(sealed.subarray(0, sealed.length - CS - 16)), k), 'truncated');
  });
});

describe('random access as a stream', () => {
  it('reads a batch of chunks at a time, only as the consumer pulls (bounded memory)', async () => {
    const k = kek();
    const cs = 4096;
    const pt = pattern(9 * 1024 * 1024 + 123);
    const sealed = await sealBytes(pt, {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: cs,
    });
    const reads: number[] = [];
    const src = bytesSource(sealed);
    const reader = await openReader(
      {
        size: src.size,
        read: (o, n) => {
          reads.push(n);
          return src.read(o, n);
        },
      },
      k,
    );
    reads.length = 0; // the header and the final chunk, read once at open
    const [a, b] = [100, pt.length - 7];
    const it = reader.stream(a, b).getReader();
    expect(reads).toEqual([]);
    const pieces: Uint8Array[] = [];
    for (let r = await it.read(); !r.done; r = await it.read()) {
      pieces.push(r.value);
      // Nothing is read ahead of the consumer: one source read per piece handed out.
      expect(reads).toHaveLength(pieces.length);
    }
    // 4 MiB of plaintext per piece at most (1024 chunks of 4 KiB), chunk-aligned after the first.
    const batch = 1024 * (cs + 16);
    expect(Math.max(...reads)).toBeLessThanOrEqual(batch);
    expect(pieces.map((p) => p.length)).toEqual([
      4 * 1024 * 1024 - 100,
      4 * 1024 * 1024,
      b - 8 * 1024 * 1024,
    ]);
    expect(Buffer.concat(pieces).equals(pt.subarray(a, b))).toBe(true);
    await expect(reader.stream(5, 5).getReader().read()).resolves.toMatchObject({ done: true });
  });

  it('refuses a range outside the plaintext before reading anything', async () => {
    const k = kek();
    const sealed = await sealBytes(pattern(CS * 3), {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: CS,
    });
    const reader = await openReader(bytesSource(sealed), k);
    for (const [a, b] of [
      [0, CS * 3 + 1],
      [5, 4],
      [-1, 2],
      [0.5, 2],
    ] as const) {
      expect(() => reader.stream(a, b)).toThrow(expect.objectContaining({ code: 'range' }));
    }
  });
});

it('an all-zero X25519 recipient key is a bad key, not an internal error', async () => {
  await expect(
    sealBytes(new Uint8Array(3), { recipients: [{ type: 'hpke', publicKey: new Uint8Array(32) }] }),
  ).rejects.toMatchObject({ code: 'bad-key' });
});
