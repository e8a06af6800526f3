/**
 * Shared fuzz property for DCAP quotes: a mutated quote is refused with an AttestationError, or (when
 * the mutation only touched PEM whitespace) it is exactly the same evidence as the original.
 */
import fc from 'fast-check';
import { expect } from 'vitest';
import { AttestationError, type KindVerifier, type VerifyOptions } from '../../../src/attest/common/types.js';
import { parseQuote } from '../../../src/attest/intel/quote.js';

function sameEvidence(a: Uint8Array, b: Uint8Array): void {
  const x = parseQuote(a);
  const y = parseQuote(b);
  expect(y.signedData).toEqual(x.signedData);
  expect(y.signature).toEqual(x.signature);
  expect(y.attestationKey).toEqual(x.attestationKey);
  expect(y.qeReport.raw).toEqual(x.qeReport.raw);
  expect(y.qeReportSignature).toEqual(x.qeReportSignature);
  expect(y.qeAuthData).toEqual(x.qeAuthData);
  expect(y.pckChain.map((c) => new Uint8Array(c.rawData))).toEqual(
    x.pckChain.map((c) => new Uint8Array(c.rawData)),
  );
}

export const mutation = (length: number) =>
  fc.oneof(
    fc.record({
      kind: fc.constant('flip' as const),
      at: fc.nat(length - 1),
      mask: fc.integer({ min: 1, max: 255 }),
    }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(length - 1), mask: fc.constant(0) }),
    fc.record({
      kind: fc.constant('append' as const),
      at: fc.constant(0),
      mask: fc.integer({ min: 1, max: 255 }),
    }),
  );

export function mutate(
  q: Uint8Array,
  m: { kind: 'flip' | 'truncate' | 'append'; at: number; mask: number },
): Uint8Array {
  if (m.kind === 'truncate') return q.subarray(0, m.at);
  if (m.kind === 'append') {
    const out = new Uint8Array(q.length + 1);
    out.set(q);
    out[q.length] = m.mask;
    return out;
  }
  const out = q.slice();
  out[m.at]! ^= m.mask;
  return out;
}

export async function fuzzQuote(
  verifier: KindVerifier,
  quote: Uint8Array,
  options: VerifyOptions,
  numRuns: number,
  seed?: number,
): Promise<void> {
  await fc.assert(
    fc.asyncProperty(mutation(quote.length), async (m) => {
      const mutated = mutate(quote, m);
      try {
        await verifier.appraiseEvidence(mutated, options);
      } catch (e) {
        if (!(e instanceof AttestationError))
          throw new Error(`not an AttestationError: ${String(e)}`, { cause: e });
        return;
      }
      sameEvidence(quote, mutated);
    }),
    { numRuns, ...(seed === undefined ? {} : { seed }) },
  );
}

/**
 * A mutated collateral.json bundle is refused with an AttestationError, or every value that matters
 * (signed JSON strings, signatures, chains, CRLs) is unchanged.
 */
export async function fuzzBundle(
  verifier: KindVerifier,
  quote: Uint8Array,
  bundle: Uint8Array,
  at: Date,
  numRuns: number,
): Promise<void> {
  const fields = ['tcb_info', 'tcb_info_issuer_chain', 'qe_identity'];
  // Hex is read case-insensitively.
  const hexFields = ['tcb_info_signature', 'qe_identity_signature', 'pck_crl', 'root_ca_crl'];
  const original = JSON.parse(new TextDecoder().decode(bundle)) as Record<string, string>;
  await fc.assert(
    fc.asyncProperty(mutation(bundle.length), async (m) => {
      const body = mutate(bundle, m);
      try {
        await verifier.appraiseEvidence(quote, {
          at,
          collateral: { get: async () => ({ body, headers: {} }) },
        });
      } catch (e) {
        if (!(e instanceof AttestationError))
          throw new Error(`not an AttestationError: ${String(e)}`, { cause: e });
        return;
      }
      const got = JSON.parse(new TextDecoder().decode(body)) as Record<string, string>;
      // A chain is compared as the certificates' DER: PEM readers skip whitespace inside a block (a \n
      // turned into \r is the same certificate), and base64 ignores the unused low bits of the last
      // character before "=" (qI= and qK= decode to the same bytes).
      const der = (pem: string | undefined) =>
        pem
          ?.replace(/\s+/g, '')
          .split(/-----(?:BEGIN|END)CERTIFICATE-----/)
          .map((b64) => Buffer.from(b64, 'base64').toString('hex'))
          .join('|');
      const same = (f: string, v: string | undefined) => (f.endsWith('_chain') ? der(v) : v);
      for (const f of fields) expect(same(f, got[f])).toBe(same(f, original[f]));
      for (const f of hexFields) expect(got[f]!.toLowerCase()).toBe(original[f]!.toLowerCase());
    }),
    { numRuns },
  );
}
