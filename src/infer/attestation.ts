/**
 * Collecting the attestation document of an inference server inside its TEE: evidence whose report
 * data binds the server's identity (identity.ts), plus its confidential GPUs bound to that evidence.
 */

import type { CpuAttester, GpuAttester } from '../tee/evidence/index.js';
import { collectComposite } from '../tee/evidence/index.js';
import { toBase64Url } from '../util/index.js';
import {
  ATTESTATION_TYPE,
  type AttestationDocument,
  type InferenceIdentity,
  identityReportData,
} from '../wire/index.js';

export interface ServerTee {
  cpu: CpuAttester;
  gpu?: GpuAttester;
}

export async function attestIdentity(
  identity: InferenceIdentity,
  tee: ServerTee,
  ear: string | null,
): Promise<AttestationDocument> {
  const reportData = await identityReportData(identity);
  const c = await collectComposite({ cpu: tee.cpu, ...(tee.gpu ? { gpu: tee.gpu } : {}), reportData });
  return {
    type: ATTESTATION_TYPE,
    identity,
    evidence: {
      kind: c.cpu.kind,
      evidence: toBase64Url(c.cpu.evidence),
      ...(c.cpu.auxblob && c.cpu.auxblob.length > 0 ? { auxblob: toBase64Url(c.cpu.auxblob) } : {}),
      gpus: c.gpus.map((g) => toBase64Url(g.evidence)),
    },
    ear,
  };
}
