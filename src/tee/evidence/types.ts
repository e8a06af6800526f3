/**
 * Shared contract of the attesters that run inside the TEE. An attester turns report data (at most 64
 * bytes, chosen by the caller — for the KBS, a hash over the broker's nonce and the TEE's ephemeral
 * key) into evidence in the TEE's native format, which the matching verifier in src/attest checks.
 */
import { REPORT_DATA_SIZE } from '../../attest/types.js';

// One size for attesters and verifiers alike; re-exported so the agent's callers need not reach into src/attest.
export { REPORT_DATA_SIZE };

/** CPU TEE kinds an agent can collect evidence for. */
export type CpuKind = 'tdx' | 'snp' | 'sgx' | 'sample';

export interface CpuEvidence {
  kind: CpuKind;
  /** TDX quote, SEV-SNP attestation report, SGX quote or sample JSON evidence. */
  evidence: Uint8Array;
  /** SEV-SNP only: the certificate table (VCEK/VLEK, ASK, ARK, CRL) the host attached, when any. */
  auxblob?: Uint8Array;
}

export interface CpuAttester {
  /** Where the evidence comes from, for logs: e.g. "configfs-tsm /sys/kernel/config/tsm/report". */
  readonly source: string;
  /** True only for the software `sample` TEE. */
  readonly insecure: boolean;
  collect(reportData: Uint8Array): Promise<CpuEvidence>;
}

/**
 * A failure to collect evidence. `code` is stable for tests and logs; the message says which file or
 * device was involved and what an operator can do about it.
 */
export class CollectionError extends Error {
  override name = 'CollectionError';
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Report data zero-padded to the 64 bytes every TEE here takes; longer input is a caller bug. */
export function padReportData(reportData: Uint8Array): Uint8Array {
  if (reportData.length > REPORT_DATA_SIZE) {
    throw new CollectionError(
      'report-data-too-long',
      `report data is ${reportData.length} bytes; TEE report data holds at most ${REPORT_DATA_SIZE}`,
    );
  }
  const out = new Uint8Array(REPORT_DATA_SIZE);
  out.set(reportData);
  return out;
}
