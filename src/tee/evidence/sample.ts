/**
 * The INSECURE software `sample` TEE for demos on ordinary machines: evidence signed by a key this
 * process generated, which proves nothing about the machine. Every verifier marks it insecure and
 * every default policy refuses it; the agent uses it only when told to (`--allow-sample`).
 */
import { createSampleAttester, type SampleAttester } from '../../attest/index.js';
import { type CpuAttester, type CpuEvidence, padReportData } from './types.js';

let processAttester: Promise<SampleAttester> | undefined;

/** One sample key per process: evidence collected twice names the same "TEE". */
function sampleForProcess(): Promise<SampleAttester> {
  processAttester ??= createSampleAttester();
  return processAttester;
}

export class InsecureSampleAttester implements CpuAttester {
  readonly source = 'sample (INSECURE software TEE: a key in this process, no hardware)';
  readonly insecure = true;

  async collect(reportData: Uint8Array): Promise<CpuEvidence> {
    // Padded like every hardware TEE's field, so one expected value fits all kinds.
    const rd = padReportData(reportData);
    const attester = await sampleForProcess();
    return { kind: 'sample', evidence: await attester.attest(rd) };
  }
}
