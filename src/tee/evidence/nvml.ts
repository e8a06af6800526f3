/**
 * NVIDIA confidential-computing GPUs. A GPU in CC mode signs an SPDM attestation report answering a
 * 32-byte nonce (NVML: nvmlDeviceGetConfComputeGpuAttestationReport, with the certificate chain from
 * nvmlDeviceGetConfComputeGpuCertificate). Cloister has no native binding to NVML, so:
 *
 * - detection looks at the device nodes (/dev/nvidia<N>), asks `nvidia-smi conf-compute -f` (CC on or
 *   off) and `-grs` (ready state) when nvidia-smi is installed, and notes whether libnvidia-ml is there;
 * - collection goes through NVIDIA's own attestation CLI when it is installed (`nvattest
 *   collect-evidence`, which drives NVML), once per GPU with that GPU's nonce;
 * - otherwise collection fails with `nvml-unavailable`, saying what to install.
 *
 * Evidence per GPU is NVIDIA's SDK serialisation, a JSON list holding that GPU's entry
 * `[{arch, nonce, evidence, certificate}]`, which the `nvidia` verifier reads.
 */
import { fromBase64, toHex, utf8 } from '../../util/index.js';
import { DEFAULT_DEV_ROOT } from '../defaults.js';
import { type AgentFs, type CommandRunner, errText, joinPath } from './fs.js';
import { CollectionError } from './types.js';

export const GPU_NONCE_SIZE = 32;
/** Where distributions install the NVML library. */
export const NVML_LIBRARY_PATHS = [
  '/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1',
  '/usr/lib64/libnvidia-ml.so.1',
  '/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1',
  '/usr/lib/libnvidia-ml.so.1',
];

export interface GpuDevice {
  index: number;
  /** The device node, e.g. /dev/nvidia0. */
  path: string;
}

export interface GpuAttester {
  readonly source: string;
  /** Number of GPUs it collects for, in NVML index order. */
  readonly count: number;
  /**
   * Evidence for every GPU: `nonces[i]` (32 bytes) is the nonce GPU i must answer, so each GPU can be
   * bound to its own position (see deriveGpuNonce). Returns one evidence per GPU, in the same order.
   */
  collect(nonces: readonly Uint8Array[]): Promise<Uint8Array[]>;
}

export interface GpuDetection {
  devices: GpuDevice[];
  /** `nvidia-smi conf-compute -f`: true CC on, false off, undefined not known. */
  ccEnabled?: boolean;
  /** `nvidia-smi conf-compute -grs`: whether the GPUs accept work (the CC ready state). */
  ready?: boolean;
  /** Set when GPUs were found that may be attested; its collect may still fail (`nvml-unavailable`). */
  attester?: GpuAttester;
  reasons: string[];
}

function checkNonces(nonces: readonly Uint8Array[], count: number): void {
  if (nonces.length !== count) {
    throw new CollectionError('gpu-count-mismatch', `${nonces.length} GPU nonces given for ${count} GPUs`);
  }
  for (const [i, n] of nonces.entries()) {
    if (n.length !== GPU_NONCE_SIZE) {
      throw new CollectionError('bad-gpu-nonce', `GPU ${i}: nonce is ${n.length} bytes; SPDM takes 32`);
    }
  }
}

/** GPUs found but no way to talk to NVML from here: every collection fails with the reason. */
export class NvmlUnavailableGpuAttester implements GpuAttester {
  readonly source = 'NVML (unavailable: no native binding and no nvattest)';
  constructor(readonly count: number) {}

  async collect(nonces: readonly Uint8Array[]): Promise<Uint8Array[]> {
    checkNonces(nonces, this.count);
    throw new CollectionError(
      'nvml-unavailable',
      `cannot collect GPU attestation reports for ${this.count} GPU(s): Cloister has no native NVML ` +
        'binding, and NVIDIA\'s attestation CLI "nvattest" (NVIDIA/attestation-sdk) is not on PATH; ' +
        'install it to collect GPU evidence',
    );
  }
}

interface NvattestEntry {
  arch: string;
  nonce: string;
  evidence: string;
  certificate: string;
}

function isEntry(v: unknown): v is NvattestEntry {
  const o = v as Record<string, unknown> | null;
  return (
    typeof o === 'object' &&
    o !== null &&
    ['arch', 'nonce', 'evidence', 'certificate'].every((k) => typeof o[k] === 'string')
  );
}

/** Parses `nvattest collect-evidence --format json` output: {result_code, result_message, evidences}. */
export function parseNvattestOutput(stdout: string): NvattestEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch (e) {
    throw new CollectionError('nvattest-bad-output', `nvattest printed no JSON: ${(e as Error).message}`);
  }
  const o = doc as Record<string, unknown> | null;
  if (typeof o !== 'object' || o === null) {
    throw new CollectionError('nvattest-bad-output', 'nvattest output is not a JSON object');
  }
  if (o.result_code !== 0) {
    throw new CollectionError(
      'nvattest-failed',
      `nvattest collect-evidence failed: ${String(o.result_message ?? `result code ${String(o.result_code)}`)}`,
    );
  }
  if (!Array.isArray(o.evidences) || !o.evidences.every(isEntry)) {
    throw new CollectionError(
      'nvattest-bad-output',
      'nvattest output has no list of {arch, nonce, evidence, certificate}',
    );
  }
  return o.evidences;
}

/** Collects through NVIDIA's `nvattest` CLI (which uses NVML), one run per GPU nonce. */
export class NvattestGpuAttester implements GpuAttester {
  readonly source: string;

  constructor(
    private readonly run: CommandRunner,
    readonly count: number,
    private readonly binary = 'nvattest',
  ) {
    this.source = `${binary} collect-evidence (NVML)`;
  }

  async collect(nonces: readonly Uint8Array[]): Promise<Uint8Array[]> {
    checkNonces(nonces, this.count);
    const out: Uint8Array[] = [];
    for (const [i, nonce] of nonces.entries()) {
      const hex = toHex(nonce);
      let r: Awaited<ReturnType<CommandRunner>>;
      try {
        r = await this.run(
          this.binary,
          [
            'collect-evidence',
            '--device',
            'gpu',
            '--gpu-evidence-source',
            'nvml',
            '--nonce',
            hex,
            '--format',
            'json',
          ],
          { timeoutMs: 120_000 },
        );
      } catch (e) {
        throw new CollectionError('nvattest-failed', `cannot run ${this.binary}: ${errText(e)}`, {
          cause: e,
        });
      }
      const entries = parseNvattestOutput(r.stdout);
      if (entries.length !== this.count) {
        throw new CollectionError(
          'gpu-count-mismatch',
          `nvattest returned evidence for ${entries.length} GPU(s); ${this.count} were detected`,
        );
      }
      const entry = entries[i]!;
      if (entry.nonce.toLowerCase() !== hex) {
        throw new CollectionError(
          'gpu-nonce-mismatch',
          `GPU ${i}: nvattest evidence answers nonce ${entry.nonce}, not ${hex}`,
        );
      }
      try {
        fromBase64(entry.evidence);
        fromBase64(entry.certificate);
      } catch {
        throw new CollectionError('nvattest-bad-output', `GPU ${i}: evidence or certificate is not base64`);
      }
      out.push(utf8.encode(JSON.stringify([entry])));
    }
    return out;
  }
}

/** The first `dir/name` along a PATH-style list that exists. */
export async function findOnPath(fs: AgentFs, name: string, pathList: string): Promise<string | undefined> {
  for (const dir of pathList.split(':').filter((d) => d !== '')) {
    const candidate = joinPath(dir, name);
    if (await fs.exists(candidate)) return candidate;
  }
  return undefined;
}

export interface GpuDetectOptions {
  fs: AgentFs;
  /** Where device nodes live; default /dev. */
  devRoot?: string;
  /** Runs nvidia-smi / nvattest; without it only device nodes and files are looked at. */
  run?: CommandRunner;
  /** PATH to search for nvidia-smi and nvattest; default none (nothing is run). */
  path?: string;
}

async function smi(
  run: CommandRunner,
  binary: string,
  flag: string,
): Promise<{ text: string } | { error: string }> {
  try {
    const r = await run(binary, ['conf-compute', flag], { timeoutMs: 30_000 });
    if (r.code !== 0) return { error: `exit ${r.code}: ${(r.stderr || r.stdout).trim().split('\n')[0]}` };
    return { text: r.stdout };
  } catch (e) {
    return { error: errText(e) };
  }
}

export async function detectGpus(options: GpuDetectOptions): Promise<GpuDetection> {
  const { fs } = options;
  const devRoot = options.devRoot ?? DEFAULT_DEV_ROOT;
  const reasons: string[] = [];
  let names: string[];
  try {
    names = await fs.readdir(devRoot);
  } catch (e) {
    reasons.push(`GPU: cannot list ${devRoot} (${errText(e)}): no NVIDIA GPU assumed`);
    return { devices: [], reasons };
  }
  const devices = names
    .map((n) => /^nvidia(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ index: Number(m[1]), path: joinPath(devRoot, m[0]) }))
    .sort((a, b) => a.index - b.index);
  if (devices.length === 0) {
    reasons.push(`GPU: no ${joinPath(devRoot, 'nvidia<N>')} device nodes: no NVIDIA GPU`);
    return { devices, reasons };
  }
  reasons.push(`GPU: found ${devices.map((d) => d.path).join(', ')} (${devices.length} NVIDIA GPU(s))`);

  const detection: GpuDetection = { devices, reasons };
  const smiPath =
    options.run && options.path !== undefined ? await findOnPath(fs, 'nvidia-smi', options.path) : undefined;
  if (options.run && smiPath) {
    const cc = await smi(options.run, smiPath, '-f');
    if ('error' in cc) reasons.push(`GPU: ${smiPath} conf-compute -f failed (${cc.error})`);
    else {
      const m = /CC status:\s*(\w+)/i.exec(cc.text);
      if (m) {
        detection.ccEnabled = m[1]!.toUpperCase() === 'ON';
        reasons.push(`GPU: ${smiPath} conf-compute -f says CC status ${m[1]!.toUpperCase()}`);
      } else reasons.push(`GPU: ${smiPath} conf-compute -f printed no "CC status" line`);
    }
    if (detection.ccEnabled !== false) {
      const rs = await smi(options.run, smiPath, '-grs');
      if ('error' in rs) reasons.push(`GPU: ${smiPath} conf-compute -grs failed (${rs.error})`);
      else {
        const m = /ready state:\s*(not ready|ready)/i.exec(rs.text);
        if (m) {
          detection.ready = m[1]!.toLowerCase() === 'ready';
          reasons.push(`GPU: ${smiPath} conf-compute -grs says ${m[1]!.toLowerCase()}`);
        }
      }
    }
  } else {
    reasons.push('GPU: nvidia-smi not found on PATH: confidential-computing mode unknown');
  }
  if (detection.ccEnabled === false) {
    reasons.push('GPU: confidential computing is off, so the GPUs cannot produce attestation reports');
    return detection;
  }
  const nvattest =
    options.run && options.path !== undefined ? await findOnPath(fs, 'nvattest', options.path) : undefined;
  if (options.run && nvattest) {
    reasons.push(`GPU: evidence via ${nvattest} collect-evidence (NVML)`);
    detection.attester = new NvattestGpuAttester(options.run, devices.length, nvattest);
    return detection;
  }
  let lib: string | undefined;
  for (const p of NVML_LIBRARY_PATHS) {
    if (await fs.exists(p)) {
      lib = p;
      break;
    }
  }
  reasons.push(
    `GPU: nvattest not found on PATH${lib ? `; ${lib} is present but Cloister has no native NVML binding` : ' and no libnvidia-ml found'}: GPU evidence cannot be collected (nvml-unavailable)`,
  );
  detection.attester = new NvmlUnavailableGpuAttester(devices.length);
  return detection;
}
