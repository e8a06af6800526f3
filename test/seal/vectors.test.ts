/**
 * The published test vectors (docs/vectors/seal.json): fixed keys and randomness → exact sealed bytes,
 * plus one negative vector per class of tampering. Another implementation of docs/format.md must
 * reproduce the positive vectors byte for byte and refuse every negative one.
 * Regenerate with UPDATE_VECTORS=1 (only when the format version changes).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { openBytes, sealBytes } from '../../src/seal/container.js';
import { SealFormatError } from '../../src/seal/format.js';
import type { Recipient, UnsealKey } from '../../src/seal/keys.js';
import { concatBytes, fromHex, toHex, utf8 } from '../../src/util/bytes.js';

const FILE = new URL('../../docs/vectors/seal.json', import.meta.url);

interface PositiveVector {
  name: string;
  chunkSize: number;
  contentType: string;
  fileName: string;
  plaintext: string;
  dataKey: string;
  noncePrefix: string;
  kek?: { uri: string; key: string };
  hpke?: { privateKey: string; publicKey: string; ephemeralIkm: string };
  sealed: string;
}
interface NegativeVector {
  name: string;
  key: 'kek' | 'hpke';
  sealed: string;
  error: string;
}

const KEK = fromHex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
const HPKE_SK = fromHex('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a');
const HPKE_PK = fromHex('8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');

const inputs = [
  {
    name: 'kbs-100-bytes-chunk-32',
    chunkSize: 32,
    contentType: '',
    fileName: '',
    plaintext: utf8.encode(
      'Cloister seals models and data so only an attested TEE can read them. 0123456789abcdefghijklmnopqrstu',
    ),
    kek: true,
    hpke: false,
  },
  {
    name: 'kbs-and-hpke-empty',
    chunkSize: 64,
    contentType: 'application/octet-stream',
    fileName: 'empty.bin',
    plaintext: new Uint8Array(0),
    kek: true,
    hpke: true,
  },
  {
    name: 'hpke-exact-two-chunks',
    chunkSize: 32,
    contentType: 'application/x-gguf',
    fileName: 'tiny.gguf',
    plaintext: Uint8Array.from({ length: 64 }, (_, i) => i),
    kek: false,
    hpke: true,
  },
];

async function build(): Promise<{ positive: PositiveVector[]; negative: NegativeVector[] }> {
  const positive: PositiveVector[] = [];
  for (const [i, v] of inputs.entries()) {
    const dataKey = Uint8Array.from({ length: 32 }, (_, j) => (0xa0 + i + j) & 0xff);
    const noncePrefix = Uint8Array.from({ length: 7 }, (_, j) => 0x10 * (i + 1) + j);
    const ikm = Uint8Array.from({ length: 32 }, (_, j) => (0x55 + i * 3 + j) & 0xff);
    const recipients: Recipient[] = [];
    const ephemeral: Uint8Array[] = [];
    if (v.kek) {
      recipients.push({ type: 'kbs', uri: 'kbs:///owner/models/kek1', kek: KEK });
      ephemeral.push(new Uint8Array(0));
    }
    if (v.hpke) {
      recipients.push({ type: 'hpke', publicKey: HPKE_PK });
      ephemeral.push(ikm);
    }
    const sealed = await sealBytes(v.plaintext, {
      recipients,
      chunkSize: v.chunkSize,
      contentType: v.contentType,
      name: v.fileName,
      deterministic: { dataKey, noncePrefix, hpkeEphemeral: ephemeral },
    });
    positive.push({
      name: v.name,
      chunkSize: v.chunkSize,
      contentType: v.contentType,
      fileName: v.fileName,
      plaintext: toHex(v.plaintext),
      dataKey: toHex(dataKey),
      noncePrefix: toHex(noncePrefix),
      ...(v.kek ? { kek: { uri: 'kbs:///owner/models/kek1', key: toHex(KEK) } } : {}),
      ...(v.hpke
        ? { hpke: { privateKey: toHex(HPKE_SK), publicKey: toHex(HPKE_PK), ephemeralIkm: toHex(ikm) } }
        : {}),
      sealed: toHex(sealed),
    });
  }
  // Negative vectors derive from the first positive vector (100 bytes in 4 chunks of 32).
  const base = fromHex(positive[0]!.sealed);
  const hl = new DataView(base.buffer).getUint32(12);
  const stride = 32 + 16;
  const chunk = (b: Uint8Array, i: number) =>
    b.subarray(hl + i * stride, Math.min(hl + (i + 1) * stride, b.length));
  const other = await sealBytes(inputs[0]!.plaintext, {
    recipients: [{ type: 'kbs', uri: 'kbs:///owner/models/kek1', kek: KEK }],
    chunkSize: 32,
    deterministic: { dataKey: fromHex(positive[0]!.dataKey), noncePrefix: fromHex('ffeeddccbbaa99') },
  });
  const flip = (at: number) => {
    const c = base.slice();
    c[at] ^= 0x01;
    return c;
  };
  const negative: NegativeVector[] = [
    { name: 'header-chunk-size-edited', key: 'kek', sealed: toHex(flip(19)), error: 'header-tampered' },
    { name: 'header-mac-flipped', key: 'kek', sealed: toHex(flip(hl - 1)), error: 'header-tampered' },
    {
      name: 'truncated-final-chunk-dropped',
      key: 'kek',
      sealed: toHex(base.subarray(0, hl + 3 * stride)),
      error: 'truncated',
    },
    {
      name: 'truncated-mid-chunk',
      key: 'kek',
      sealed: toHex(base.subarray(0, base.length - 5)),
      error: 'truncated',
    },
    {
      name: 'extended-after-final-chunk',
      key: 'kek',
      sealed: toHex(concatBytes(base, chunk(base, 0))),
      error: 'trailing-data',
    },
    {
      name: 'chunks-0-and-1-swapped',
      key: 'kek',
      sealed: toHex(
        concatBytes(base.subarray(0, hl), chunk(base, 1), chunk(base, 0), chunk(base, 2), chunk(base, 3)),
      ),
      error: 'chunk-tampered',
    },
    {
      name: 'chunk-1-duplicated-over-2',
      key: 'kek',
      sealed: toHex(
        concatBytes(base.subarray(0, hl), chunk(base, 0), chunk(base, 1), chunk(base, 1), chunk(base, 3)),
      ),
      error: 'chunk-tampered',
    },
    {
      name: 'chunk-1-from-another-file-same-key',
      key: 'kek',
      sealed: toHex(
        concatBytes(base.subarray(0, hl), chunk(base, 0), chunk(other, 1), chunk(base, 2), chunk(base, 3)),
      ),
      error: 'chunk-tampered',
    },
    {
      name: 'ciphertext-bit-flipped',
      key: 'kek',
      sealed: toHex(flip(hl + 2 * stride + 3)),
      error: 'chunk-tampered',
    },
    { name: 'tag-bit-flipped', key: 'kek', sealed: toHex(flip(hl + stride - 1)), error: 'chunk-tampered' },
    { name: 'bad-magic', key: 'kek', sealed: toHex(flip(1)), error: 'not-sealed' },
    { name: 'unknown-version', key: 'kek', sealed: toHex(flip(9)), error: 'unsupported-version' },
    { name: 'wrong-key', key: 'hpke', sealed: toHex(base), error: 'no-matching-key' },
  ];
  return { positive, negative };
}

const keyFor = (which: 'kek' | 'hpke'): UnsealKey =>
  which === 'kek'
    ? { kind: 'kek', secret: KEK }
    : { kind: 'hpke-private', privateKey: HPKE_SK, publicKey: HPKE_PK };

describe('published test vectors', async () => {
  const fresh = await build();
  if (process.env.UPDATE_VECTORS || !existsSync(FILE)) {
    writeFileSync(FILE, `${JSON.stringify({ format: 'cloister-sealed v1', ...fresh }, null, 2)}\n`);
  }
  const published = JSON.parse(readFileSync(FILE, 'utf8')) as {
    positive: PositiveVector[];
    negative: NegativeVector[];
  };

  it('sealing with the fixed inputs reproduces every positive vector byte for byte', () => {
    expect(fresh.positive.map((v) => v.sealed)).toEqual(published.positive.map((v) => v.sealed));
  });

  for (const v of published.positive) {
    it(`opens ${v.name} with each of its keys`, async () => {
      const sealed = fromHex(v.sealed);
      if (v.kek) expect(toHex(await openBytes(sealed, keyFor('kek')))).toBe(v.plaintext);
      if (v.hpke) expect(toHex(await openBytes(sealed, keyFor('hpke')))).toBe(v.plaintext);
    });
  }

  for (const v of published.negative) {
    it(`refuses ${v.name} with ${v.error}`, async () => {
      const p = openBytes(fromHex(v.sealed), keyFor(v.key));
      await expect(p).rejects.toBeInstanceOf(SealFormatError);
      await expect(p).rejects.toMatchObject({ code: v.error });
    });
  }
});
