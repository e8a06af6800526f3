/**
 * Which TEE this process runs in, and how to collect its evidence. Checked in order, first match wins:
 *
 *   1. configfs-tsm (TDX, SEV-SNP): the report directory exists, a probe entry can be created, and its
 *      `provider` names a known provider;
 *   2. Gramine (SGX): /dev/attestation exists and `attestation_type` is "dcap";
 *   3. the INSECURE `sample` TEE, only when explicitly allowed.
 *
 * NVIDIA GPUs are detected beside the CPU TEE. Every decision is recorded as a reason naming the file
 * or device looked at and what was found there, so an operator can see why a TEE was (not) found.
 */

import { DEFAULT_DEV_ROOT, DEFAULT_GRAMINE_ROOT, DEFAULT_TSM_ROOT } from '../defaults.js';
import { type AgentFs, type CommandRunner, errText, joinPath } from './fs.js';
import { GramineAttester, readAttestationType } from './gramine.js';
import { detectGpus, type GpuDetection } from './nvml.js';
import { InsecureSampleAttester, type InsecureSampleOptions } from './sample.js';
import { TSM_PROVIDERS, TsmAttester, type TsmAttesterOptions } from './tsm.js';
import type { CpuAttester, CpuKind } from './types.js';

export interface DetectOptions {
  fs: AgentFs;
  tsmRoot?: string;
  gramineRoot?: string;
  devRoot?: string;
  /** Fall back to the insecure software TEE when no hardware TEE is found. */
  allowSample?: boolean;
  /** What the sample TEE reports when it is used (measurement, host data). */
  sample?: InsecureSampleOptions;
  /** Runs nvidia-smi / nvattest for GPU detection; omitted, only files are looked at. */
  run?: CommandRunner;
  /** PATH searched for those programs. */
  path?: string;
  /** Passed to the configfs-tsm attester (retries, SNP privlevel). */
  tsm?: Pick<TsmAttesterOptions, 'maxAttempts' | 'privlevel'>;
}

export interface Detection {
  /** The CPU TEE found; undefined when none. */
  kind?: CpuKind;
  attester?: CpuAttester;
  /** Every check made, in order, with what was found. */
  reasons: string[];
  gpus: GpuDetection;
}

const KIND_NAME: Record<CpuKind, string> = {
  tdx: 'Intel TDX',
  snp: 'AMD SEV-SNP',
  sgx: 'Intel SGX',
  sample: 'sample (INSECURE software TEE)',
};

export function kindName(kind: CpuKind): string {
  return KIND_NAME[kind];
}

async function detectTsm(
  o: DetectOptions,
  reasons: string[],
): Promise<{ kind: 'tdx' | 'snp'; attester: TsmAttester } | undefined> {
  const root = o.tsmRoot ?? DEFAULT_TSM_ROOT;
  if (!(await o.fs.exists(root))) {
    reasons.push(
      `configfs-tsm: ${root} does not exist (needs Linux ≥ 6.7 with CONFIG_TSM_REPORTS and configfs mounted at /sys/kernel/config)`,
    );
    const devRoot = o.devRoot ?? DEFAULT_DEV_ROOT;
    for (const [dev, what] of [
      ['tdx_guest', 'TDX'],
      ['sev-guest', 'SEV-SNP'],
    ] as const) {
      const p = joinPath(devRoot, dev);
      if (await o.fs.exists(p)) {
        reasons.push(
          `configfs-tsm: ${p} exists, so this looks like a ${what} guest, but Cloister collects through configfs-tsm only: mount configfs or use a newer kernel`,
        );
      }
    }
    return undefined;
  }
  const probe = new TsmAttester({ fs: o.fs, root, ...o.tsm });
  let provider: string;
  try {
    provider = await probe.provider();
  } catch (e) {
    const why = errText(e).replace(/^configfs-tsm: /, '');
    reasons.push(`configfs-tsm: ${root} exists but a probe entry gave no provider: ${why}`);
    return undefined;
  }
  const kind = TSM_PROVIDERS[provider];
  if (kind === undefined) {
    reasons.push(
      `configfs-tsm: ${root}/<probe>/provider is "${provider}", not a provider Cloister supports (${Object.keys(TSM_PROVIDERS).join(', ')})`,
    );
    return undefined;
  }
  reasons.push(`configfs-tsm: ${root}/<probe>/provider is "${provider}": ${KIND_NAME[kind]}`);
  return { kind, attester: new TsmAttester({ fs: o.fs, root, ...o.tsm, expectKind: kind }) };
}

async function detectGramine(o: DetectOptions, reasons: string[]): Promise<GramineAttester | undefined> {
  const root = o.gramineRoot ?? DEFAULT_GRAMINE_ROOT;
  if (!(await o.fs.exists(root))) {
    reasons.push(`Gramine: ${root} does not exist (not inside a Gramine SGX enclave)`);
    return undefined;
  }
  let type: string;
  try {
    type = await readAttestationType(o.fs, root);
  } catch (e) {
    reasons.push(
      `Gramine: ${root} exists but ${joinPath(root, 'attestation_type')} cannot be read: ${errText(e)}`,
    );
    return undefined;
  }
  if (type !== 'dcap') {
    reasons.push(
      `Gramine: ${joinPath(root, 'attestation_type')} is "${type}"; only "dcap" is supported (set sgx.remote_attestation = "dcap")`,
    );
    return undefined;
  }
  reasons.push(`Gramine: ${joinPath(root, 'attestation_type')} is "dcap": ${KIND_NAME.sgx}`);
  return new GramineAttester({ fs: o.fs, root });
}

export async function detectTee(options: DetectOptions): Promise<Detection> {
  const reasons: string[] = [];
  const found = await (async (): Promise<{ kind: CpuKind; attester: CpuAttester } | undefined> => {
    const tsm = await detectTsm(options, reasons);
    if (tsm) return tsm;
    const gramine = await detectGramine(options, reasons);
    if (gramine) return { kind: 'sgx', attester: gramine };
    if (options.allowSample) {
      reasons.push('sample: no hardware TEE found; using the INSECURE sample TEE because it was allowed');
      return { kind: 'sample', attester: new InsecureSampleAttester(options.sample) };
    }
    reasons.push('sample: not used (allow it with --allow-sample; it is insecure and for demos only)');
    return undefined;
  })();
  const gpus = await detectGpus({
    fs: options.fs,
    ...(options.devRoot !== undefined ? { devRoot: options.devRoot } : {}),
    ...(options.run ? { run: options.run } : {}),
    ...(options.path !== undefined ? { path: options.path } : {}),
  });
  return { ...(found ?? {}), reasons, gpus };
}
