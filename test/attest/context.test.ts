/**
 * Verifier state lives in a VerifierContext: what one context verified is reused there and invisible to
 * another, and there is no module-level cache left to clear.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createVerifierContext } from '../../src/attest/context.js';
import * as intel from '../../src/attest/intel/index.js';
import * as nvidia from '../../src/attest/nvidia/index.js';
import * as snp from '../../src/attest/snp/index.js';
import { tdxVerifier } from '../../src/attest/tdx/index.js';
import { collateralFrom, V4_UPTODATE, vector } from './intel/vectors.js';

const AT = new Date('2025-07-01T00:00:00Z');

afterEach(() => {
  vi.restoreAllMocks();
});

describe('VerifierContext', () => {
  it('TDX: a second verification in one context checks only the two quote signatures; a fresh context checks everything', async () => {
    const quote = vector(`${V4_UPTODATE}/quote.bin`);
    const collateral = collateralFrom(V4_UPTODATE);
    const context = createVerifierContext();
    expect((await tdxVerifier.appraiseEvidence(quote, { at: AT, collateral, context })).status).toBe(
      'affirming',
    );
    const spy = vi.spyOn(crypto.subtle, 'verify');
    await tdxVerifier.appraiseEvidence(quote, { at: AT, collateral, context });
    expect(spy).toHaveBeenCalledTimes(2);
    spy.mockClear();
    const fresh = await tdxVerifier.appraiseEvidence(quote, {
      at: AT,
      collateral,
      context: createVerifierContext(),
    });
    expect(fresh.status).toBe('affirming');
    // Quote and QE report, TCB info and QE identity, the PCK chain and both CRLs: all checked again.
    expect(spy.mock.calls.length).toBeGreaterThan(2);
  });

  it('a context remembers nothing past its validity windows: a later time in the same context fails afresh', async () => {
    const quote = vector(`${V4_UPTODATE}/quote.bin`);
    const collateral = collateralFrom(V4_UPTODATE);
    const context = createVerifierContext();
    await tdxVerifier.appraiseEvidence(quote, { at: AT, collateral, context });
    const late = await tdxVerifier
      .appraiseEvidence(quote, { at: new Date('2025-07-25T00:00:00Z'), collateral, context })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(late).toMatchObject({ stage: 'verify', code: 'collateral-expired' });
  });

  it('no verifier module exports a function that clears module-level caches', () => {
    for (const mod of [intel, snp, nvidia]) {
      for (const name of Object.keys(mod)) expect(name).not.toMatch(/^clear/i);
    }
  });
});
