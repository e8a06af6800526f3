/**
 * Composite evidence (one CPU TEE plus its confidential GPUs) as src/attest/composite.ts verifies it.
 * GPU i answers deriveGpuNonce(base, i). For the standalone composite format the base is the CPU
 * report data itself (the default); the KBS client passes SHA-384 of the canonical
 * {"tee-pubkey", "nonce"} instead, because there the CPU report data must also cover the GPU evidence
 * and so cannot exist before it (collect the GPUs first with `collectGpuEvidence`).
 */
import { deriveGpuNonce } from '../../attest/index.js';
import type { GpuAttester } from './nvml.js';
import type { CpuAttester, CpuEvidence } from './types.js';

export interface GpuEvidence {
  kind: 'nvidia';
  evidence: Uint8Array;
  /** The nonce this GPU answered. */
  nonce: Uint8Array;
}

export interface CollectedComposite {
  cpu: CpuEvidence;
  gpus: GpuEvidence[];
}

/** Evidence of every GPU, GPU i answering deriveGpuNonce(nonceBase, i). */
export async function collectGpuEvidence(gpu: GpuAttester, nonceBase: Uint8Array): Promise<GpuEvidence[]> {
  const nonces = await Promise.all(Array.from({ length: gpu.count }, (_, i) => deriveGpuNonce(nonceBase, i)));
  const evidence = await gpu.collect(nonces);
  return evidence.map((e, i) => ({ kind: 'nvidia', evidence: e, nonce: nonces[i]! }));
}

/**
 * CPU evidence for `reportData` and, when `gpu` is given, every GPU's evidence bound through
 * `deviceNonceBase` (default: `reportData`). The result's `cpu` and `gpus` fit `CompositeEvidence`.
 */
export async function collectComposite(options: {
  cpu: CpuAttester;
  gpu?: GpuAttester;
  reportData: Uint8Array;
  deviceNonceBase?: Uint8Array;
}): Promise<CollectedComposite> {
  const gpus = options.gpu
    ? await collectGpuEvidence(options.gpu, options.deviceNonceBase ?? options.reportData)
    : [];
  const cpu = await options.cpu.collect(options.reportData);
  return { cpu, gpus };
}
