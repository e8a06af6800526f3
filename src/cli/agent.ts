/**
 * `cloister agent …`: the commands that run inside the TEE. `agent detect` reports which TEE (and which
 * GPUs) evidence can be collected from, and why — every file and device it looked at. Exit status 0
 * when a TEE was found, 1 when none was (one line on stderr says so).
 */
import { type Command, CommanderError } from 'commander';
import { type Detection, detectTee, kindName } from '../agent/attest/detect.js';
import { DEFAULT_GRAMINE_ROOT } from '../agent/attest/gramine.js';
import { nodeFs, nodeRunner } from '../agent/attest/node.js';
import { DEFAULT_DEV_ROOT } from '../agent/attest/nvml.js';
import { DEFAULT_TSM_ROOT } from '../agent/attest/tsm.js';
import type { Output } from './verify.js';

export interface DetectCliOptions {
  json?: boolean;
  tsmRoot?: string;
  gramineRoot?: string;
  devRoot?: string;
  allowSample?: boolean;
}

function toJson(d: Detection): object {
  return {
    found: d.kind !== undefined,
    ...(d.kind ? { kind: d.kind, source: d.attester!.source, insecure: d.attester!.insecure } : {}),
    reasons: d.reasons,
    gpus: {
      count: d.gpus.devices.length,
      devices: d.gpus.devices.map((g) => g.path),
      ...(d.gpus.ccEnabled !== undefined ? { ccEnabled: d.gpus.ccEnabled } : {}),
      ...(d.gpus.ready !== undefined ? { ready: d.gpus.ready } : {}),
      ...(d.gpus.attester ? { source: d.gpus.attester.source } : {}),
      reasons: d.gpus.reasons,
    },
  };
}

function toText(d: Detection): string {
  const lines: string[] = [];
  if (d.kind) {
    lines.push(`TEE: ${kindName(d.kind)} (${d.kind}) via ${d.attester!.source}`);
    if (d.attester!.insecure)
      lines.push('WARNING: the sample TEE is software only; never trust it with secrets');
  } else lines.push('TEE: none found');
  lines.push('checked:');
  for (const r of d.reasons) lines.push(`  - ${r}`);
  const n = d.gpus.devices.length;
  lines.push(n > 0 ? `GPUs: ${n} (${d.gpus.attester?.source ?? 'no evidence source'})` : 'GPUs: none');
  for (const r of d.gpus.reasons) lines.push(`  - ${r}`);
  return `${lines.join('\n')}\n`;
}

export async function runDetect(opts: DetectCliOptions, io: Output): Promise<number> {
  const d = await detectTee({
    fs: nodeFs,
    tsmRoot: opts.tsmRoot ?? DEFAULT_TSM_ROOT,
    gramineRoot: opts.gramineRoot ?? DEFAULT_GRAMINE_ROOT,
    devRoot: opts.devRoot ?? DEFAULT_DEV_ROOT,
    allowSample: opts.allowSample === true,
    run: nodeRunner,
    path: process.env.PATH ?? '',
  });
  io.out(opts.json ? `${JSON.stringify(toJson(d), null, 2)}\n` : toText(d));
  if (d.kind === undefined) {
    io.err(
      'cloister agent detect: no TEE found (no configfs-tsm provider, no Gramine /dev/attestation; see the reasons above)\n',
    );
    return 1;
  }
  return 0;
}

export function registerAgent(program: Command): void {
  const agent = program.command('agent').description('commands that run inside the TEE');
  agent
    .command('detect')
    .description('find the TEE (TDX, SEV-SNP, SGX) and GPUs evidence can be collected from, and say why')
    .option('--json', 'print {found, kind, source, reasons, gpus} as JSON')
    .option('--tsm-root <dir>', `configfs-tsm report directory (default ${DEFAULT_TSM_ROOT})`)
    .option('--gramine-root <dir>', `Gramine attestation directory (default ${DEFAULT_GRAMINE_ROOT})`)
    .option('--dev-root <dir>', `device directory searched for GPUs (default ${DEFAULT_DEV_ROOT})`)
    .option('--allow-sample', 'fall back to the INSECURE software sample TEE when no hardware TEE is found')
    .addHelpText(
      'after',
      '\nExamples:\n  cloister agent detect\n  cloister agent detect --json --allow-sample',
    )
    .exitOverride()
    .action(async (opts: DetectCliOptions) => {
      const code = await runDetect(opts, {
        out: (s) => process.stdout.write(s),
        err: (s) => process.stderr.write(s),
      });
      // main() turns a CommanderError into the process exit code.
      if (code !== 0) throw new CommanderError(code, 'cloister.agent.detect', '');
    });
}
