/**
 * Verify stage for a GPU report: the attestation-key chain (in order, to the NVIDIA Device Identity CA,
 * valid at `at`), the report signature (ECDSA P-384 / SHA-384 over request ‖ response-without-signature,
 * as nvtrust and nvat check it), the FWID binding between the report and the key certificate, and the
 * requester nonce.
 */

import { bs, equalBytes, toHex } from '../../util/index.js';
import type { Certificate } from '../common/pki.js';
import { AttestationError } from '../common/types.js';
import { contextOf, type VerifierContext } from '../context.js';
import {
  certificateFwid,
  certificateUeid,
  commonName,
  parseAnchors,
  type VerifiedChain,
  verifyOrderedChain,
} from './chain.js';
import { NONCE_LENGTH, type ParsedGpuReport } from './report.js';
import { NVIDIA_DEVICE_IDENTITY_CA_PEM } from './roots.js';

export type GpuArch = 'HOPPER' | 'BLACKWELL';

export interface GpuVerifyOptions {
  /** The GPU's attestation-key chain, PEM (leaf first). */
  certChain: Uint8Array;
  at: Date;
  /** Replaces the bundled NVIDIA Device Identity CA (test authority). */
  trustAnchors?: Uint8Array[];
  /** The nonce the verifier issued; the report's requester nonce must equal it (zero-padded to 32). */
  expectedNonce?: Uint8Array;
  /** Where verified chains are remembered; default: the shared default context. */
  context?: VerifierContext;
}

export interface VerifiedGpuReport {
  report: ParsedGpuReport;
  chain: VerifiedChain;
  arch: GpuArch;
  /** CN of the certificate above the leaf, NVIDIA's hwmodel claim (e.g. "GH100 A01 GSP BROM"). */
  hwModel: string;
  /** Leaf serial number in decimal, NVIDIA's ueid claim. */
  ueid: string;
  /** Whether the report carried an FWID (it then equals the certificate's). */
  fwidBound: boolean;
  /** Whether the requester nonce was compared with an expected nonce. */
  nonceChecked: boolean;
}

function gpuTrustAnchors(context: VerifierContext, trustAnchors: Uint8Array[] | undefined): Certificate[] {
  return parseAnchors(context, trustAnchors ?? [NVIDIA_DEVICE_IDENTITY_CA_PEM], 'GPU trust anchor');
}

export async function verifyGpuReport(
  report: ParsedGpuReport,
  opts: GpuVerifyOptions,
): Promise<VerifiedGpuReport> {
  const context = contextOf(opts);
  const chain = await verifyOrderedChain(
    context,
    opts.certChain,
    gpuTrustAnchors(context, opts.trustAnchors),
    opts.at,
    'GPU attestation-key chain',
  );
  const leaf = chain.path[0]!;
  const ok = await crypto.subtle.verify(
    { name: 'ECDSA', hash: 'SHA-384' },
    chain.leafKey,
    bs(report.response.signature),
    bs(report.signedBytes),
  );
  if (!ok) {
    throw new AttestationError(
      'verify',
      'bad-signature',
      `GPU report signature does not verify with the attestation key of "${leaf.subject}"`,
    );
  }

  const reportFwid = report.response.opaqueData.fwid;
  if (reportFwid) {
    const certFwid = certificateFwid(leaf);
    if (!certFwid || !equalBytes(certFwid, reportFwid)) {
      throw new AttestationError(
        'verify',
        'fwid-mismatch',
        `the report FWID ${toHex(reportFwid)} differs from the attestation-key certificate's ${certFwid ? toHex(certFwid) : '(none)'}`,
      );
    }
  }

  let nonceChecked = false;
  if (opts.expectedNonce) {
    if (opts.expectedNonce.length > NONCE_LENGTH) {
      throw new AttestationError(
        'verify',
        'bad-expected-nonce',
        `expected nonce is ${opts.expectedNonce.length} bytes; GPU nonces are 32`,
      );
    }
    const want = new Uint8Array(NONCE_LENGTH);
    want.set(opts.expectedNonce);
    if (!equalBytes(want, report.request.nonce)) {
      throw new AttestationError(
        'verify',
        'nonce-mismatch',
        `the report answers nonce ${toHex(report.request.nonce)}, not the expected ${toHex(want)} (stale or replayed evidence)`,
      );
    }
    nonceChecked = true;
  }

  const hwModel = commonName(chain.path[1] ?? leaf) ?? '';
  return {
    report,
    chain,
    arch: archOf(commonName(leaf) ?? ''),
    hwModel,
    ueid: certificateUeid(leaf),
    fwidBound: reportFwid !== undefined,
    nonceChecked,
  };
}

function archOf(cn: string): GpuArch {
  if (/^GH\d/.test(cn)) return 'HOPPER';
  if (/^GB\d/.test(cn)) return 'BLACKWELL';
  throw new AttestationError(
    'verify',
    'unsupported-gpu',
    `attestation key "${cn}" is neither a Hopper (GH…) nor a Blackwell (GB…) GPU`,
  );
}
