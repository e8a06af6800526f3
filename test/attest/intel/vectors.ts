/** Test-side access to the Intel vectors in test/vectors (see PROVENANCE.md for each verdict). */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { folderCollateral } from '../../../src/attest/collateral/node.js';
import { AttestationError } from '../../../src/attest/common/types.js';
import { parseQuote } from '../../../src/attest/intel/quote.js';

export const VECTORS = join(import.meta.dirname, '../../vectors');

export function vector(path: string): Uint8Array {
  return new Uint8Array(readFileSync(join(VECTORS, path)));
}

export function collateralFrom(...dirs: string[]) {
  return folderCollateral(...dirs.map((d) => join(VECTORS, d)));
}

export const V4_UPTODATE = 'tdx/dcap-qvl_v4_b0c06f_uptodate';
export const V5_NO_MATCH = 'tdx/dcap-qvl_v5_90c06f_no-tcb-match';
export const GO_TDX = 'tdx/go-tdx-guest_v4_50806f';
export const SGX_HARDENING = 'sgx/dcap-qvl_v3_00a067_sw-hardening';

/** Byte offset of the quote signature and of the QE report inside a quote. */
export function offsets(quote: Uint8Array): { signature: number; qeReport: number; certData: number } {
  const q = parseQuote(quote);
  const signature = q.signedData.length + 4;
  const qeReport = signature + 128 + (q.header.version >= 4 ? 6 : 0);
  const certData = q.pckChainBytes.byteOffset - quote.byteOffset;
  return { signature, qeReport, certData };
}

export function flip(bytes: Uint8Array, at: number, mask = 0x01): Uint8Array {
  const out = bytes.slice();
  out[at]! ^= mask;
  return out;
}

/** Awaits a rejection and checks it is an AttestationError with this stage and code. */
export async function rejects(
  p: Promise<unknown> | (() => unknown),
  stage: string,
  code: string,
): Promise<AttestationError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${stage}/${code}`).toBeInstanceOf(AttestationError);
  const e = err as AttestationError;
  expect({ stage: e.stage, code: e.code }, e.message).toEqual({ stage, code });
  return e;
}
