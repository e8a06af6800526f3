/**
 * `cloister lora convert`: a PEFT LoRA adapter (adapter_model.safetensors + adapter_config.json,
 * sealed) → a GGUF LoRA adapter for its sealed base, converted inside the TEE. The verb writes a job
 * manifest for the built-in "lora-convert" trainer and runs it exactly as `cloister train` runs a
 * job: the TEE attests, the brokers release the keys, the inputs and the base are unsealed in
 * memory, the adapter is sealed to --to and a signed receipt names the base, the inputs and the adapter.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { type Command, CommanderError } from 'commander';
import { DEFAULT_PRIVATE_PARENT } from '../tee/defaults.js';
import { brokerFor, type TeeCliOptions, teeFor, teeOptions } from './agent.js';
import { FlagError } from './io.js';

interface ConvertCliOptions extends TeeCliOptions {
  base: string;
  adapter: string;
  config: string;
  to: string[];
  out?: string;
  privateDir: string;
  allowDisk?: boolean;
  printInitData?: boolean;
}

/** The manifest's name for the job, and its file name in the output folder. */
export const CONVERT_JOB_FILE = 'lora-convert.json';

const collect = (v: string, prev: string[]) => [...prev, v];

export function registerLora(program: Command): void {
  const lora = program.command('lora').description('LoRA adapters: bring your own fine-tuner');
  teeOptions(
    lora
      .command('convert')
      .description(
        'inside a TEE: turn a sealed PEFT LoRA adapter into a GGUF adapter for its sealed llama base, sealed to --to, with a signed receipt',
      ),
  )
    .requiredOption('--base <file>', 'the sealed GGUF base model the adapter was trained on')
    .requiredOption('--adapter <file>', 'the sealed adapter_model.safetensors (PEFT)')
    .requiredOption('--config <file>', 'the sealed adapter_config.json (PEFT)')
    .requiredOption(
      '--to <recipient>',
      'who the GGUF adapter is sealed to (repeatable): kbs:///repo/type/tag',
      collect,
      [],
    )
    .option(
      '--out <dir>',
      `where the job (${CONVERT_JOB_FILE}), adapter.gguf.sealed and training-receipt.json go (default: the adapter's folder/out)`,
    )
    .option('--private-dir <dir>', 'memory file system for the plaintext', DEFAULT_PRIVATE_PARENT)
    .option('--allow-disk', 'accept a --private-dir that is not tmpfs/ramfs (plaintext may reach a disk)')
    .option(
      '--print-init-data',
      'write the job, print the init-data a TEE for it must be launched with, and exit',
    )
    .addHelpText(
      'after',
      '\nExample:\n  cloister lora convert --base base.gguf.sealed --adapter adapter_model.safetensors.sealed \\\n' +
        '    --config adapter_config.json.sealed --to kbs:///company/adapters/key --tee sample',
    )
    .exitOverride()
    .action(async (opts: ConvertCliOptions) => {
      const code = await convertAction(opts);
      if (code !== 0) throw new CommanderError(code, 'cloister.lora', '');
    });
}

/** SHA-256 of a file, streamed (a base model may be many gigabytes). */
async function sha256File(path: string, flag: string): Promise<string> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  } catch (e) {
    throw new FlagError(`${flag} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return hash.digest('hex');
}

/**
 * The job manifest of a conversion (docs/training.md, "The job file"): absolute paths, so the job
 * file may live anywhere; no checkpoints (there are no steps).
 */
export async function convertManifest(o: {
  base: string;
  adapter: string;
  config: string;
  to: string[];
}): Promise<Record<string, unknown>> {
  if (o.to.length === 0) throw new FlagError('--to: name at least one kbs:///repo/type/tag');
  for (const t of o.to) {
    if (!/^kbs:\/\/\/[^/]+\/[^/]+\/[^/]+$/.test(t))
      throw new FlagError(`--to ${t}: must be kbs:///repo/type/tag (the key the GGUF adapter is sealed to)`);
  }
  const ref = async (path: string, flag: string) => ({
    path: resolve(path),
    sha256: await sha256File(path, flag),
  });
  return {
    version: 1,
    name: 'lora-convert',
    base: await ref(o.base, '--base'),
    trainer: { builtin: 'lora-convert' },
    inputs: [
      { name: 'adapter', ...(await ref(o.adapter, '--adapter')) },
      { name: 'config', ...(await ref(o.config, '--config')) },
    ],
    hyperparameters: {},
    seed: 0,
    outputs: { recipients: o.to },
    checkpoints: { everySteps: 0, everyMinutes: 0, dir: '.' },
  };
}

async function convertAction(opts: ConvertCliOptions): Promise<number> {
  const log = (line: string) => process.stderr.write(`cloister lora convert: ${line}\n`);
  if (opts.initData !== undefined)
    throw new FlagError(
      '--init-data: cloister lora convert makes its own init-data from the job (launch the TEE with what --print-init-data prints)',
    );
  const manifest = await convertManifest(opts);
  const outputDir = resolve(opts.out ?? join(dirname(resolve(opts.adapter)), 'out'));
  await mkdir(outputDir, { recursive: true });
  const jobPath = join(outputDir, CONVERT_JOB_FILE);
  // The job's identity is these exact bytes: the init-data and the receipt name their digest.
  await writeFile(jobPath, `${JSON.stringify(manifest, null, 2)}\n`);
  const { prepareJob, runTrainingJob } = await import('../train/index.js');
  const prepared = await prepareJob(jobPath);
  if (opts.printInitData) {
    // No newline: the host hashes the file as it is, and the digest must be that of these bytes.
    process.stdout.write(prepared.initData.body);
    process.stderr.write(`job ${prepared.parsed.job} (${jobPath})\ntrainer ${prepared.trainerDigest}\n`);
    return 0;
  }
  const tee = await teeFor(opts, log, prepared.initData);
  const broker = await brokerFor(opts, tee, prepared.initData);
  const result = await runTrainingJob(prepared, {
    broker,
    tee: { kind: tee.kind, attester: tee.attester },
    outputDir,
    privateDir: { parent: opts.privateDir, allowDisk: opts.allowDisk === true },
    log,
  });
  return result.status;
}
