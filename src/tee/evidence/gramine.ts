/**
 * SGX evidence inside a Gramine enclave, through Gramine's pseudo-files under /dev/attestation:
 *
 *   read   attestation_type    "dcap" (ECDSA quotes; the only kind Cloister verifies), "epid" or "none"
 *   write  user_report_data    the 64 bytes of report data
 *   read   quote               an SGX DCAP quote (v3) whose report body carries that report data
 *
 * The pseudo-files are per enclave, not per caller, so two concurrent collections in one process could
 * read each other's quote: collections are serialised, and the quote's report data is checked against
 * what was written.
 */
import { equalBytes, toHex, utf8 } from '../../util/index.js';
import { DEFAULT_GRAMINE_ROOT } from '../defaults.js';
import { type AgentFs, errnoOf, errText, joinPath } from './fs.js';
import { evidenceReportData } from './layout.js';
import { CollectionError, type CpuAttester, type CpuEvidence, padReportData } from './types.js';

export interface GramineAttesterOptions {
  fs: AgentFs;
  /** Gramine's attestation pseudo-directory; default /dev/attestation. */
  root?: string;
}

export async function readAttestationType(fs: AgentFs, root: string): Promise<string> {
  return utf8.decode(await fs.readFile(joinPath(root, 'attestation_type'))).trim();
}

export class GramineAttester implements CpuAttester {
  readonly root: string;
  readonly source: string;
  readonly insecure = false;
  private readonly fs: AgentFs;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(options: GramineAttesterOptions) {
    this.fs = options.fs;
    this.root = options.root ?? DEFAULT_GRAMINE_ROOT;
    this.source = `Gramine ${this.root}`;
  }

  collect(reportData: Uint8Array): Promise<CpuEvidence> {
    const run = this.queue.then(() => this.collectNow(reportData));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async collectNow(reportData: Uint8Array): Promise<CpuEvidence> {
    const rd = padReportData(reportData);
    const typePath = joinPath(this.root, 'attestation_type');
    let type: string;
    try {
      type = await readAttestationType(this.fs, this.root);
    } catch (e) {
      throw new CollectionError('gramine-unavailable', `Gramine: cannot read ${typePath}: ${errText(e)}`, {
        cause: e,
      });
    }
    if (type !== 'dcap') {
      throw new CollectionError(
        'gramine-not-dcap',
        `Gramine: ${typePath} is "${type}"; Cloister needs DCAP quotes (set sgx.remote_attestation = "dcap" in the manifest)`,
      );
    }
    const rdPath = joinPath(this.root, 'user_report_data');
    try {
      await this.fs.writeFile(rdPath, rd);
    } catch (e) {
      throw new CollectionError('gramine-io', `Gramine: cannot write ${rdPath}: ${errText(e)}`, { cause: e });
    }
    const quotePath = joinPath(this.root, 'quote');
    let quote: Uint8Array;
    try {
      quote = await this.fs.readFile(quotePath);
    } catch (e) {
      const hint =
        errnoOf(e) === 'EACCES' || errnoOf(e) === 'EPERM'
          ? ' (is the quoting enclave reachable: aesmd running, the AESM socket mounted?)'
          : '';
      throw new CollectionError('gramine-io', `Gramine: cannot read ${quotePath}: ${errText(e)}${hint}`, {
        cause: e,
      });
    }
    const got = evidenceReportData('sgx', quote);
    if (got === undefined) {
      throw new CollectionError(
        'gramine-bad-quote',
        `Gramine: ${quotePath} is not an SGX quote v3 (${quote.length} bytes)`,
      );
    }
    if (!equalBytes(got, rd)) {
      throw new CollectionError(
        'report-data-mismatch',
        `Gramine: the quote from ${quotePath} carries report data ${toHex(got)}, not the ${toHex(rd)} written to ${rdPath}`,
      );
    }
    return { kind: 'sgx', evidence: quote };
  }
}
