import { describe, expect, it } from 'vitest';
import { dhkemDecap, keyScheduleBase, nodeBackend } from '../../src/ohttp/node.js';
import { fromHex, toHex } from '../../src/util/bytes.js';
import { BACKENDS } from './helpers.js';

// RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
const V = {
  info: fromHex('4f6465206f6e2061204772656369616e2055726e'),
  pkEm: '37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431',
  skEm: '52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736',
  pkRm: '3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d',
  skRm: '4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8',
  sharedSecret: 'fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc',
  key: '4531685d41d65f03dc48f6b8302c05b0',
  baseNonce: '56d890e5accaaf011cff4b7d',
  exporterSecret: '45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8',
  pt: fromHex('4265617574792069732074727574682c20747275746820626561757479'),
  encryptions: [
    {
      seq: 0,
      aad: '436f756e742d30',
      ct: 'f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a',
    },
    {
      seq: 1,
      aad: '436f756e742d31',
      ct: 'af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84',
    },
    {
      seq: 2,
      aad: '436f756e742d32',
      ct: '498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180',
    },
    {
      seq: 4,
      aad: '436f756e742d34',
      ct: '583bd32bc67a5994bb8ceaca813d369bca7b2a42408cddef5e22f880b631215a09fc0012bc69fccaa251c0246d',
    },
    {
      seq: 255,
      aad: '436f756e742d323535',
      ct: '7175db9717964058640a3a11fb9007941a5d1757fda1a6935c805c21af32505bf106deefec4a49ac38d71c9e0a',
    },
    {
      seq: 256,
      aad: '436f756e742d323536',
      ct: '957f9800542b0b8891badb026d79cc54597cb2d225b54c00c5238c25d05c30e3fbeda97d2e0e1aba483a2df9f2',
    },
  ],
  exports: [
    { context: '', value: '3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee' },
    { context: '00', value: '2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5' },
    {
      context: '54657374436f6e74657874',
      value: 'e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931',
    },
  ],
};

function nonceFor(seq: number): Uint8Array {
  const n = fromHex(V.baseNonce);
  for (let i = n.length - 1, s = seq; s > 0; i--, s = Math.floor(s / 256)) n[i]! ^= s & 0xff;
  return n;
}

const ab = (hex: string) => fromHex(hex).buffer as ArrayBuffer;

describe('RFC 9180 A.1.1 key schedule (node backend internals)', () => {
  it('Decap gives the shared secret; KeySchedule gives key, base_nonce and exporter_secret', () => {
    const shared = dhkemDecap(fromHex(V.pkEm), fromHex(V.skRm));
    expect(toHex(shared)).toBe(V.sharedSecret);
    const ks = keyScheduleBase(1, shared, V.info);
    expect(toHex(ks.key)).toBe(V.key);
    expect(toHex(ks.baseNonce)).toBe(V.baseNonce);
    expect(toHex(ks.exporterSecret)).toBe(V.exporterSecret);
  });
});

describe.each(BACKENDS)('RFC 9180 A.1.1 (%s backend)', (_name, backend) => {
  it('sender: enc, the sequence-0 encryption and the exports', async () => {
    const s = await backend.setupSender({
      aeadId: 1,
      recipientPublicKey: fromHex(V.pkRm),
      info: V.info,
      ephemeral: { privateKey: fromHex(V.skEm), publicKey: fromHex(V.pkEm) },
    });
    expect(toHex(s.enc)).toBe(V.pkEm);
    const first = V.encryptions[0]!;
    expect(toHex(await s.seal(fromHex(first.aad), V.pt))).toBe(first.ct);
    for (const e of V.exports) {
      expect(toHex(new Uint8Array(await s.exporter.export(ab(e.context), 32)))).toBe(e.value);
    }
  });

  it('recipient: opens the sequence-0 encryption and exports the same values', async () => {
    const r = await backend.setupRecipient({
      aeadId: 1,
      privateKey: fromHex(V.skRm),
      enc: fromHex(V.pkEm),
      info: V.info,
    });
    const first = V.encryptions[0]!;
    expect(toHex(await r.open(fromHex(first.aad), fromHex(first.ct)))).toBe(toHex(V.pt));
    for (const e of V.exports) {
      expect(toHex(new Uint8Array(await r.exporter.export(ab(e.context), 32)))).toBe(e.value);
    }
  });

  it('AES-128-GCM under the schedule key gives every published encryption (nonce = base_nonce XOR seq)', async () => {
    const k = await backend.aeadKey(1, fromHex(V.key));
    for (const e of V.encryptions) {
      expect(toHex(await k.seal(nonceFor(e.seq), fromHex(e.aad), V.pt)), `seq ${e.seq}`).toBe(e.ct);
      expect(toHex(await k.open(nonceFor(e.seq), fromHex(e.aad), fromHex(e.ct)))).toBe(toHex(V.pt));
    }
  });

  it('refuses a tampered ciphertext, the wrong AAD or the wrong nonce', async () => {
    const k = await backend.aeadKey(1, fromHex(V.key));
    const { aad, ct } = V.encryptions[1]!;
    const bad = fromHex(ct);
    bad[3]! ^= 1;
    await expect(async () => k.open(nonceFor(1), fromHex(aad), bad)).rejects.toThrow();
    await expect(async () => k.open(nonceFor(1), fromHex('00'), fromHex(ct))).rejects.toThrow();
    await expect(async () => k.open(nonceFor(2), fromHex(aad), fromHex(ct))).rejects.toThrow();
    await expect(async () =>
      k.open(nonceFor(1), fromHex(aad), fromHex(ct).subarray(0, 15)),
    ).rejects.toThrow();
  });

  it('refuses a low-order enc and keys of the wrong length', async () => {
    const setup = { aeadId: 1, privateKey: fromHex(V.skRm), enc: new Uint8Array(32), info: V.info };
    await expect(async () => backend.setupRecipient(setup)).rejects.toThrow();
    await expect(async () =>
      backend.setupRecipient({ ...setup, enc: fromHex(V.pkEm).subarray(0, 31) }),
    ).rejects.toThrow();
    await expect(async () =>
      backend.setupSender({ aeadId: 1, recipientPublicKey: new Uint8Array(31), info: V.info }),
    ).rejects.toThrow();
  });

  it('HKDF-SHA256 matches RFC 5869 test cases 1 and 3 (no salt, no info)', async () => {
    const ikm = fromHex('0b'.repeat(22));
    const prk = await backend.extract(fromHex('000102030405060708090a0b0c'), ikm);
    expect(toHex(prk)).toBe('077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5');
    expect(toHex(await backend.expand(prk, fromHex('f0f1f2f3f4f5f6f7f8f9'), 42))).toBe(
      '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865',
    );
    const prk3 = await backend.extract(new Uint8Array(0), ikm);
    expect(toHex(prk3)).toBe('19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04');
    expect(toHex(await backend.expand(prk3, new Uint8Array(0), 42))).toBe(
      '8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8',
    );
  });
});

describe('node backend specifics', () => {
  it('a context seals and opens messages in sequence (nonce = base_nonce XOR seq), never reusing one', () => {
    const ephemeral = { privateKey: fromHex(V.skEm), publicKey: fromHex(V.pkEm) };
    const s = nodeBackend.setupSender({
      aeadId: 1,
      recipientPublicKey: fromHex(V.pkRm),
      info: V.info,
      ephemeral,
    });
    const r = nodeBackend.setupRecipient({
      aeadId: 1,
      privateKey: fromHex(V.skRm),
      enc: fromHex(V.pkEm),
      info: V.info,
    });
    for (const e of V.encryptions.slice(0, 3)) {
      const ct = s.seal(fromHex(e.aad), V.pt); // synchronous
      expect(toHex(ct), `seq ${e.seq}`).toBe(e.ct);
      expect(() => r.open(fromHex(e.aad), fromHex(V.encryptions[4]!.ct)), 'another seq').toThrow();
      expect(r.open(fromHex(e.aad), ct)).toEqual(V.pt); // a failed open did not move the sequence
    }
  });

  it('a gateway key changed in place is parsed again, not served from the cache', () => {
    const sk = fromHex(V.skRm);
    expect(toHex(dhkemDecap(fromHex(V.pkEm), sk))).toBe(V.sharedSecret);
    sk.set(fromHex(V.skEm));
    expect(toHex(dhkemDecap(fromHex(V.pkEm), sk))).not.toBe(V.sharedSecret);
  });

  it('refuses an AEAD key of the wrong length and an AEAD it does not implement', () => {
    expect(() => nodeBackend.aeadKey(1, new Uint8Array(32))).toThrow(/16-byte key/);
    expect(() => nodeBackend.aeadKey(3, new Uint8Array(32))).toThrow(/not implemented/);
  });
});
