import { describe, expect, it } from 'vitest';
import { parseQuote } from '../../../src/attest/intel/quote.js';
import { toHex, utf8 } from '../../../src/util/bytes.js';
import { GO_TDX, offsets, rejects, SGX_HARDENING, V4_UPTODATE, V5_NO_MATCH, vector } from './vectors.js';

describe('parseQuote on the real quotes', () => {
  it('reads a v4 TDX quote (dcap-qvl, 70 bytes of zero padding)', () => {
    const q = parseQuote(vector(`${V4_UPTODATE}/quote.bin`));
    expect(q.header.version).toBe(4);
    expect(q.tee).toBe('tdx');
    expect(q.body.kind).toBe('td10');
    expect(q.paddingLength).toBe(70);
    if (q.body.kind === 'sgx') throw new Error('unreachable');
    expect(toHex(q.body.report.teeTcbSvn)).toBe('06010300000000000000000000000000');
    expect(toHex(q.body.report.mrTd)).toBe(
      '91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7',
    );
    expect(q.qeReport.isvSvn).toBe(6);
    expect(q.qeReport.isvProdId).toBe(2);
    expect(toHex(q.pck.fmspc)).toBe('b0c06f000000');
    expect(toHex(q.pck.pceId)).toBe('0000');
    expect(q.pck.sgxType).toBe(1);
    expect(q.pck.tcb.components).toEqual([3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(q.pck.tcb.pcesvn).toBe(11);
    expect(q.pckChain.map((c) => /CN=([^,]+)/.exec(c.subject)?.[1])).toEqual([
      'Intel SGX PCK Certificate',
      'Intel SGX PCK Platform CA',
      'Intel SGX Root CA',
    ]);
  });

  it('reads a v5 quote with a TD 1.5 body', () => {
    const q = parseQuote(vector(`${V5_NO_MATCH}/quote.bin`));
    expect(q.header.version).toBe(5);
    expect(q.body.kind).toBe('td15');
    if (q.body.kind !== 'td15') throw new Error('unreachable');
    expect(toHex(q.body.report.teeTcbSvn2!)).toBe('0d010300000000000000000000000000');
    expect(q.body.report.mrServiceTd).toHaveLength(48);
    expect(q.pck.tcb.components[7]).toBe(3);
  });

  it('reads a v3 SGX quote with its Processor-CA PCK chain', () => {
    const q = parseQuote(vector(`${SGX_HARDENING}/quote.bin`));
    expect(q.tee).toBe('sgx');
    expect(q.body.kind).toBe('sgx');
    if (q.body.kind !== 'sgx') throw new Error('unreachable');
    expect(toHex(q.body.report.mrEnclave)).toBe(
      '33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb',
    );
    expect(q.qeReport.isvSvn).toBe(10);
    expect(q.pck.sgxType).toBe(0);
    expect(q.pck.tcb.components.slice(0, 6)).toEqual([11, 11, 2, 2, 255, 1]);
    expect(q.pckChain[1]!.subject).toContain('Processor CA');
  });

  it('reads the Occlum quote and the 8000-byte zero-padded GCE quote', () => {
    expect(toHex(parseQuote(vector('sgx/trustee_occlum_v3_00606a/quote.bin')).pck.fmspc)).toBe(
      '00606a000000',
    );
    const gce = parseQuote(vector('tdx/go-tdx-guest_ccel_gce/quote.bin'));
    expect(gce.paddingLength).toBe(3065);
    expect(toHex(gce.pck.fmspc)).toBe('00806f050000');
  });

  it('refuses the go-tdx-guest quote: 39 ASCII bytes follow the signature data', async () => {
    const raw = vector(`${GO_TDX}/quote.bin`);
    const e = await rejects(() => parseQuote(raw), 'parse', 'trailing-bytes');
    expect(e.message).toMatch(/39 trailing bytes/);
    // Without the appended text it is a well-formed v4 quote.
    expect(parseQuote(raw.subarray(0, raw.length - 39)).header.version).toBe(4);
  });
});

describe('parseQuote refusals', () => {
  const raw = vector(`${V4_UPTODATE}/quote.bin`);
  const unpadded = raw.subarray(0, raw.length - 70);

  it('refuses every truncation with the field that ran out', async () => {
    for (const n of [0, 10, 47, 48, 600, 631, 636, 700, 1200, unpadded.length - 1]) {
      const e = await rejects(() => parseQuote(raw.subarray(0, n)), 'parse', 'truncated');
      expect(e.message).toMatch(/truncated/);
    }
  });

  it('refuses non-zero bytes after the signature data, accepts zero padding', async () => {
    const extra = new Uint8Array(unpadded.length + 1);
    extra.set(unpadded);
    expect(parseQuote(extra).paddingLength).toBe(1);
    extra[extra.length - 1] = 1;
    await rejects(() => parseQuote(extra), 'parse', 'trailing-bytes');
  });

  it('refuses unknown versions, key types, TEE types and QE vendors', async () => {
    const patch = (at: number, bytes: number[]) => {
      const b = raw.slice();
      b.set(bytes, at);
      return b;
    };
    await rejects(() => parseQuote(patch(0, [2, 0])), 'parse', 'unsupported-version');
    await rejects(() => parseQuote(patch(0, [6, 0])), 'parse', 'unsupported-version');
    await rejects(() => parseQuote(patch(0, [3, 0])), 'parse', 'unsupported-version');
    await rejects(() => parseQuote(patch(2, [3, 0])), 'parse', 'unsupported-key-type');
    await rejects(() => parseQuote(patch(4, [0x82])), 'parse', 'unsupported-tee-type');
    await rejects(() => parseQuote(patch(12, [0])), 'parse', 'unknown-qe-vendor');
  });

  it('refuses a v5 body type that does not fit the TEE, or a wrong body size', async () => {
    const v5 = vector(`${V5_NO_MATCH}/quote.bin`);
    const b = v5.slice();
    b[48] = 1;
    await rejects(() => parseQuote(b), 'parse', 'bad-length');
    const c = v5.slice();
    c[48] = 9;
    await rejects(() => parseQuote(c), 'parse', 'unsupported-body-type');
  });

  it('refuses certification data other than a QE report carrying a PCK chain', async () => {
    const { signature } = offsets(raw);
    const b = raw.slice();
    b[signature + 128] = 5;
    await rejects(() => parseQuote(b), 'parse', 'unsupported-certification-data');
  });

  it('refuses text outside the PEM blocks of the PCK chain', async () => {
    const { certData } = offsets(raw);
    const q = parseQuote(raw);
    const junk = raw.slice();
    junk[certData + q.pckChainBytes.length - 1] = 0x41; // the trailing NUL becomes 'A'
    await rejects(() => parseQuote(junk), 'parse', 'bad-certificate');
  });

  it('accepts the PCK chain in any order: the leaf is found by issuer links', () => {
    const { certData } = offsets(raw);
    const q = parseQuote(raw);
    const blocks = utf8
      .decode(q.pckChainBytes)
      .match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/g)!;
    const reordered = utf8.encode(`${blocks[2]}${blocks[1]}${blocks[0]}`);
    const b = raw.slice();
    b.set(reordered, certData);
    const r = parseQuote(b);
    expect(r.pckChain[0]!.subject).toContain('SGX PCK Certificate');
    expect(toHex(r.pck.fmspc)).toBe('b0c06f000000');
  });
});

describe('certificates must be exactly the bytes their issuer signed (fuzzing regressions)', () => {
  // Each flip changes an unsigned outer field of a certificate in the PCK chain that the X.509 reader
  // would otherwise accept: the outer algorithm tag, the BIT STRING's unused bits, the ECDSA-Sig-Value.
  const cases: [string, number, number, string][] = [
    ['tdx/dstack_v4_90c06f_eventlog/quote.bin', 3845, 2, 'outer signature algorithm tag 0x30 → 0xb0'],
    ['tdx/trustee_v4_50806f/quote.bin', 3865, 4, 'signature BIT STRING with 1 unused bit'],
    ['azure-vtpm/openpcc_az-tdx/td_quote.bin', 2906, 56, 'ECDSA-Sig-Value tag 0x30 → 0xb8'],
    ['sgx/dcap-qvl_v3_00a067_sw-hardening/quote.bin', 3529, 4, 'ECDSA-Sig-Value length 0x45 → 0x44'],
  ];
  for (const [path, at, mask, what] of cases) {
    it(`${path}: ${what}`, async () => {
      const q = vector(path);
      q[at]! ^= mask;
      await rejects(() => parseQuote(q), 'parse', 'bad-certificate');
    });
  }
});
