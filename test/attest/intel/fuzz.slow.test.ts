import { describe, it } from 'vitest';
import { sgxVerifier } from '../../../src/attest/sgx/index.js';
import { tdxVerifier } from '../../../src/attest/tdx/index.js';
import { fuzzBundle, fuzzQuote } from './fuzz.js';
import { collateralFrom, GO_TDX, SGX_HARDENING, V4_UPTODATE, V5_NO_MATCH, vector } from './vectors.js';

const AT_2025 = new Date('2025-07-01T00:00:00Z');
const AT_2026 = new Date('2026-03-01T00:00:00Z');

describe('fuzzing every real DCAP quote (slow)', () => {
  const tdx: [string, string, Date][] = [
    [`${V4_UPTODATE}/quote.bin`, V4_UPTODATE, AT_2025],
    [`${V5_NO_MATCH}/quote.bin`, V5_NO_MATCH, AT_2026],
    ['tdx/dstack_v4_90c06f_eventlog/quote.bin', V5_NO_MATCH, AT_2026],
    ['tdx/trustee_v5_90c06f/quote.bin', V5_NO_MATCH, AT_2026],
    ['azure-vtpm/openpcc_az-tdx/td_quote.bin', V5_NO_MATCH, AT_2026],
    ['tdx/trustee_v4_50806f/quote.bin', GO_TDX, new Date('2023-07-01T01:00:00Z')],
    ['tdx/go-tdx-guest_ccel_gce/quote.bin', V5_NO_MATCH, AT_2026],
  ];
  for (const [quote, collateral, at] of tdx) {
    it(quote, async () => {
      await fuzzQuote(tdxVerifier, vector(quote), { at, collateral: collateralFrom(collateral) }, 3000);
    });
  }
  for (const quote of [`${SGX_HARDENING}/quote.bin`, 'sgx/trustee_occlum_v3_00606a/quote.bin']) {
    it(quote, async () => {
      await fuzzQuote(
        sgxVerifier,
        vector(quote),
        { at: AT_2025, collateral: collateralFrom(SGX_HARDENING) },
        3000,
      );
    });
  }
  for (const [quote, dir, at] of [
    [`${V4_UPTODATE}/quote.bin`, V4_UPTODATE, AT_2025],
    [`${SGX_HARDENING}/quote.bin`, SGX_HARDENING, AT_2025],
  ] as const) {
    it(`${dir}/collateral.json`, async () => {
      const verifier = dir === SGX_HARDENING ? sgxVerifier : tdxVerifier;
      await fuzzBundle(verifier, vector(quote), vector(`${dir}/collateral.json`), at, 3000);
    });
  }
});
