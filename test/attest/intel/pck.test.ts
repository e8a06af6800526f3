import { describe, expect, it } from 'vitest';
import { derChildren, oidText } from '../../../src/attest/intel/der.js';
import { parsePckExtensions } from '../../../src/attest/intel/pck.js';
import { parseQuote } from '../../../src/attest/intel/quote.js';
import { toHex } from '../../../src/util/bytes.js';
import { rejects, SGX_HARDENING, vector } from './vectors.js';

describe('PCK certificate SGX extension', () => {
  it('reads PPID, TCB, PCE-ID, FMSPC and SGX type of a Processor-CA PCK certificate', () => {
    const q = parseQuote(vector(`${SGX_HARDENING}/quote.bin`));
    const ext = parsePckExtensions(q.pckChain[0]!);
    expect(ext.ppid).toHaveLength(16);
    expect(toHex(ext.tcb.cpusvn)).toBe('0b0b0202ff0100000000000000000000');
    expect(ext.tcb.pcesvn).toBe(13);
    expect(ext.platformInstanceId).toBeUndefined();
  });

  it('refuses a certificate without the extension', async () => {
    const q = parseQuote(vector(`${SGX_HARDENING}/quote.bin`));
    await rejects(() => parsePckExtensions(q.pckChain[1]!), 'parse', 'bad-pck-extension');
  });
});

describe('DER reader', () => {
  it('decodes OIDs and refuses overruns and non-minimal lengths', () => {
    expect(oidText(new Uint8Array([0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01]))).toBe(
      '1.2.840.113741.1.13.1',
    );
    expect(() => derChildren(new Uint8Array([0x04, 0x05, 1, 2]))).toThrow(/overruns/);
    expect(() => derChildren(new Uint8Array([0x04, 0x81, 0x01, 1]))).toThrow(/below 128/);
    expect(() => oidText(new Uint8Array([0x2a, 0x86]))).toThrow();
  });
});
