/**
 * The sample TEE's launch settings for `run`, `agent serve` and `serve`: a measurement to report and,
 * with `--init-data`, the init-data digest in its host_data — what a host and an image fix for a real
 * TEE — so that measurement pinning and init-data policies can be rehearsed before hardware.
 */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from 'commander';
import type { InsecureSampleOptions } from '../tee/evidence/index.js';

/** Bytes in a sample measurement: the size of TDX MRTD and the SEV-SNP launch measurement. */
const MEASUREMENT_BYTES = 48;

/** `--sample-measurement`: 48 bytes of hex, kept lower-case as the evidence carries it. */
export function sampleMeasurementArg(v: string): string {
  if (!new RegExp(`^[0-9a-fA-F]{${MEASUREMENT_BYTES * 2}}$`).test(v)) {
    throw new InvalidArgumentError(
      `must be ${MEASUREMENT_BYTES} bytes of hex (${MEASUREMENT_BYTES * 2} digits), got ${v.length} characters`,
    );
  }
  return v.toLowerCase();
}

/**
 * What the sample "host" sets at launch: the measurement given, and the digest of the `--init-data`
 * file (its own algorithm over its exact bytes), as a SEV-SNP host puts it into host_data.
 */
export async function sampleLaunch(
  o: {
    sampleMeasurement?: string;
    initData?: string;
  },
  /** Init-data made by the command itself (`cloister train`), used instead of a file. */
  made?: { format: 'toml' | 'json'; body: string },
): Promise<InsecureSampleOptions> {
  const { sampleHostData } = await import('../tee/evidence/index.js');
  const out: InsecureSampleOptions = {};
  if (o.sampleMeasurement !== undefined) out.measurement = o.sampleMeasurement;
  if (made) {
    out.hostData = await sampleHostData(made);
  } else if (o.initData !== undefined) {
    const file = o.initData;
    let body: string;
    try {
      body = new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(file));
    } catch (e) {
      // Worded as brokerFor's reading of the same file, so the error is the same whatever the TEE.
      throw new Error(`cannot read --init-data ${file}: ${(e as Error).message}`);
    }
    const format = file.toLowerCase().endsWith('.json') ? 'json' : 'toml';
    try {
      out.hostData = await sampleHostData({ format, body });
    } catch (e) {
      throw new Error(`${file}: ${(e as Error).message}`);
    }
  }
  return out;
}
