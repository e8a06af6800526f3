import { describe, expect, it } from 'vitest';
import { deriveGpuNonce } from '../../src/attest/composite.js';
import { sampleVerifier } from '../../src/attest/sample/index.js';
import { GUID_ASK, GUID_VCEK } from '../../src/attest/snp/certtable.js';
import { sealBytes } from '../../src/seal/container.js';
import { parseHeader } from '../../src/seal/format.js';
import { generateKek, kekToJwk } from '../../src/seal/keys.js';
import type { GpuAttester } from '../../src/tee/evidence/nvml.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import type { CpuAttester } from '../../src/tee/evidence/types.js';
import {
  encodeGpuEvidence,
  encodePrimaryEvidence,
  KekCache,
  kbsAttester,
  kekFromResource,
  resourcePathOf,
} from '../../src/tee/keys.js';
import { fromHex, toHex, utf8 } from '../../src/util/bytes.js';
import { deviceEvidence, primaryEvidenceBytes } from '../../src/wire/kbs.js';

/** A GHCB certificate table: {GUID, offset, length} entries, an all-zero entry, then the data. */
function certTable(entries: [string, Uint8Array][]): Uint8Array {
  const headerLen = (entries.length + 1) * 24;
  const total = headerLen + entries.reduce((n, [, d]) => n + d.length, 0);
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  let off = headerLen;
  entries.forEach(([guid, data], i) => {
    out.set(fromHex(guid.replace(/-/g, '')), i * 24);
    dv.setUint32(i * 24 + 16, off, true);
    dv.setUint32(i * 24 + 20, data.length, true);
    out.set(data, off);
    off += data.length;
  });
  return out;
}

describe('primary evidence encoding, read back by the broker', () => {
  const quote = new Uint8Array(700).map((_, i) => i & 0xff);
  for (const kind of ['tdx', 'sgx'] as const) {
    it(`${kind}: {"quote": base64}`, () => {
      const json = encodePrimaryEvidence({ kind, evidence: quote });
      expect(Object.keys(json as object)).toEqual(['quote']);
      expect(primaryEvidenceBytes(kind, JSON.parse(JSON.stringify(json))).evidence).toEqual(quote);
    });
  }

  it('snp: the report, and the VCEK taken out of the host certificate table', () => {
    const vcek = utf8.encode('vcek-der');
    const ask = utf8.encode('ask-der');
    const json = encodePrimaryEvidence({
      kind: 'snp',
      evidence: quote,
      auxblob: certTable([
        [GUID_ASK, ask],
        [GUID_VCEK, vcek],
      ]),
    });
    const back = primaryEvidenceBytes('snp', JSON.parse(JSON.stringify(json)));
    expect(back.evidence).toEqual(quote);
    expect(back.extra).toEqual({ 'vcek.der': vcek });
    expect(Object.keys(encodePrimaryEvidence({ kind: 'snp', evidence: quote }) as object)).toEqual([
      'report',
    ]);
  });

  it('sample: the JSON document passes through byte for byte', async () => {
    const e = await new InsecureSampleAttester().collect(utf8.encode('rd'));
    const back = primaryEvidenceBytes('sample', JSON.parse(JSON.stringify(encodePrimaryEvidence(e))));
    expect(back.evidence).toEqual(e.evidence);
  });
});

describe('kbsAttester', () => {
  it('binds GPU i to deriveGpuNonce(deviceBase, i) and encodes {"nvidia": {"gpus": […]}}', async () => {
    const asked: Uint8Array[][] = [];
    const gpu: GpuAttester = {
      source: 'fake',
      count: 2,
      async collect(nonces) {
        asked.push([...nonces]);
        return nonces.map((n) => utf8.encode(JSON.stringify([{ arch: 'HOPPER', nonce: toHex(n) }])));
      },
    };
    const a = kbsAttester('sample', new InsecureSampleAttester(), gpu);
    const base = new Uint8Array(48).fill(9);
    const additional = await a.additionalEvidence!(base);
    expect(asked[0]).toEqual([await deriveGpuNonce(base, 0), await deriveGpuNonce(base, 1)]);
    const parts = deviceEvidence(additional);
    expect(parts.map((p) => JSON.parse(utf8.decode(p.evidence))[0].nonce)).toEqual([
      toHex(await deriveGpuNonce(base, 0)),
      toHex(await deriveGpuNonce(base, 1)),
    ]);
    expect(encodeGpuEvidence([])).toBe('');
  });

  it('without GPUs there is no additionalEvidence; the primary evidence answers the report data', async () => {
    const a = kbsAttester('sample', new InsecureSampleAttester());
    expect(a.tee).toBe('sample');
    expect(a.additionalEvidence).toBeUndefined();
    const rd = new Uint8Array(64).fill(3);
    const { evidence } = primaryEvidenceBytes('sample', await a.primaryEvidence(rd));
    const appraisal = await sampleVerifier.appraiseEvidence(evidence, {
      at: new Date(),
      collateral: { get: async () => undefined },
      expectedReportData: rd,
    });
    expect(appraisal.kind).toBe('sample');
  });

  it('refuses evidence of another kind than the one detected', async () => {
    const liar: CpuAttester = {
      source: 'x',
      insecure: false,
      collect: async () => ({ kind: 'snp', evidence: new Uint8Array(1) }),
    };
    await expect(kbsAttester('tdx', liar).primaryEvidence(new Uint8Array(64))).rejects.toMatchObject({
      code: 'tee-changed',
    });
  });
});

describe('KEKs from the broker', () => {
  const uri = 'kbs:///owner/models/kek1';
  it('accepts the keygen JWK and 32 raw bytes', () => {
    const k = generateKek(uri);
    expect(kekFromResource(utf8.encode(JSON.stringify(kekToJwk(k))), uri).secret).toEqual(k.secret);
    expect(kekFromResource(k.secret, uri)).toEqual({ kind: 'kek', uri, secret: k.secret });
  });

  it('refuses a JWK of another URI, a non-KEK JWK and binary that is not a key', () => {
    const other = generateKek('kbs:///owner/models/other');
    expect(() => kekFromResource(utf8.encode(JSON.stringify(kekToJwk(other))), uri)).toThrow(
      /holds the KEK of kbs:\/\/\/owner\/models\/other/,
    );
    expect(() => kekFromResource(utf8.encode('{"kty":"OKP","crv":"X25519","x":"AAAA"}'), uri)).toThrow(
      /bad|bytes/,
    );
    expect(() => kekFromResource(new Uint8Array([0xff, 0xfe, 0x00]), uri)).toThrow(
      /neither 32 key bytes nor a JWK/,
    );
  });

  it('resource paths from URIs; anything else is refused', () => {
    expect(resourcePathOf(uri)).toBe('owner/models/kek1');
    expect(() => resourcePathOf('kbs://host/a/b/c')).toThrow(/not a key broker resource URI/);
    expect(() => resourcePathOf('kbs:///a/b')).toThrow(/not a key broker resource URI/);
  });

  it('KekCache: one fetch per key, failures are not cached, a file without kbs recipient is refused', async () => {
    const k = generateKek(uri);
    let calls = 0;
    let fail = true;
    const cache = new KekCache({
      token: async () => 't',
      async getResource(path) {
        calls++;
        if (fail) throw new Error('broker down');
        expect(path).toBe('owner/models/kek1');
        return k.secret.slice();
      },
    });
    await expect(cache.get(uri)).rejects.toThrow('broker down');
    fail = false;
    await cache.get(uri);
    await cache.get(uri);
    expect(calls).toBe(2);
    const hpkeOnly = await sealBytes(utf8.encode('x'), {
      recipients: [{ type: 'hpke', publicKey: new Uint8Array(32).fill(9) }],
    });
    const header = parseHeader(hpkeOnly.subarray(0, new DataView(hpkeOnly.buffer).getUint32(12)));
    await expect(cache.forHeader(header, 'f.sealed')).rejects.toMatchObject({ code: 'no-kbs-recipient' });
    const cached = await cache.get(uri);
    await cache.clear();
    expect(cached.secret.every((b) => b === 0)).toBe(true);
  });
});
