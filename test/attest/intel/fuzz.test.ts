import { describe, it } from 'vitest';
import { sgxVerifier } from '../../../src/attest/sgx/index.js';
import { tdxVerifier } from '../../../src/attest/tdx/index.js';
import { fuzzBundle, fuzzQuote } from './fuzz.js';
import { collateralFrom, SGX_HARDENING, V4_UPTODATE, V5_NO_MATCH, vector } from './vectors.js';

describe('fuzzing real quotes with their collateral', () => {
  it('TDX v4 (UpToDate): every mutation is refused with an AttestationError', async () => {
    await fuzzQuote(
      tdxVerifier,
      vector(`${V4_UPTODATE}/quote.bin`),
      { at: new Date('2025-07-01T00:00:00Z'), collateral: collateralFrom(V4_UPTODATE) },
      120,
    );
  });

  it('TDX v5 and SGX v3', async () => {
    await fuzzQuote(
      tdxVerifier,
      vector(`${V5_NO_MATCH}/quote.bin`),
      { at: new Date('2026-03-01T00:00:00Z'), collateral: collateralFrom(V5_NO_MATCH) },
      40,
    );
    await fuzzQuote(
      sgxVerifier,
      vector(`${SGX_HARDENING}/quote.bin`),
      { at: new Date('2025-07-01T00:00:00Z'), collateral: collateralFrom(SGX_HARDENING) },
      40,
    );
  });

  it('mutated collateral.json bundles are refused unless what they say is unchanged', async () => {
    await fuzzBundle(
      tdxVerifier,
      vector(`${V4_UPTODATE}/quote.bin`),
      vector(`${V4_UPTODATE}/collateral.json`),
      new Date('2025-07-01T00:00:00Z'),
      40,
    );
  });
});
