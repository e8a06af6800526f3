/**
 * `cloister train JOB [-- COMMAND…]`: a training job inside the TEE (src/train). A thin shell: the
 * options, the progress line and the metrics file; the job itself is src/train/app.ts.
 */
import { constants, createWriteStream, openSync, type WriteStream } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { type Command, CommanderError } from 'commander';
import { DEFAULT_PRIVATE_PARENT } from '../tee/defaults.js';
import { brokerFor, type TeeCliOptions, teeFor, teeOptions } from './agent.js';
import { FlagError } from './io.js';

interface TrainCliOptions extends TeeCliOptions {
  outputDir?: string;
  privateDir: string;
  allowDisk?: boolean;
  metrics: string | false;
  printInitData?: boolean;
  stopAfter?: string;
  quiet?: boolean;
}

export function registerTrain(program: Command): void {
  teeOptions(
    program
      .command('train')
      .description(
        'inside a TEE: run the training job JOB (a JSON manifest): unseal its inputs, train, seal checkpoints and the model to its owner, sign a training receipt',
      )
      .argument('<job>', 'the job manifest (JSON; see docs/training.md)')
      .argument(
        '[command...]',
        "a bring-your-own trainer (after --); must equal the manifest's trainer.command",
      ),
  )
    .option(
      '--output-dir <dir>',
      "where the sealed model and training-receipt.json go (default: JOB's folder/out)",
    )
    .option(
      '--metrics <file>',
      'metrics as JSON lines (default: OUTPUT-DIR/metrics.jsonl); they leave the TEE in clear',
    )
    .option('--no-metrics', 'write no metrics file')
    .option('--private-dir <dir>', 'memory file system for the plaintext', DEFAULT_PRIVATE_PARENT)
    .option('--allow-disk', 'accept a --private-dir that is not tmpfs/ramfs (plaintext may reach a disk)')
    .option('--print-init-data', 'print the init-data a TEE for this job must be launched with, and exit')
    .option(
      '--stop-after <steps>',
      'built-in trainers: stop as if killed after this many steps (to rehearse a resume)',
    )
    .option('-q, --quiet', 'no progress line')
    .addHelpText(
      'after',
      '\nExamples:\n  cloister train job.json --tee sample\n  cloister train job.json -- python3 train.py\n' +
        '  cloister train job.json --print-init-data > init-data.json',
    )
    .exitOverride()
    .action(async (job: string, command: string[], opts: TrainCliOptions) => {
      const code = await trainAction(job, command, opts);
      if (code !== 0) throw new CommanderError(code, 'cloister.train', '');
    });
}

/** The metrics file, appended to; never through a link (the runner is root in the TEE). */
function openMetrics(path: string): number {
  try {
    return openSync(
      path,
      constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW,
      0o644,
    );
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(
      `metrics file ${path}: ${code === 'ELOOP' ? 'is a symbolic link; refusing to write through it' : (code ?? (e as Error).message)}`,
    );
  }
}

async function trainAction(jobPath: string, command: string[], opts: TrainCliOptions): Promise<number> {
  const log = (line: string) => {
    clearLine();
    process.stderr.write(`cloister train: ${line}\n`);
  };
  let stopAfter: number | undefined;
  if (opts.stopAfter !== undefined) {
    stopAfter = Number(opts.stopAfter);
    if (!Number.isSafeInteger(stopAfter) || stopAfter < 1)
      throw new FlagError(`--stop-after must be a whole number ≥ 1, got ${opts.stopAfter}`);
  }
  const { prepareJob, runTrainingJob, formatProgress, MetricsLog, ThroughputTracker } = await import(
    '../train/index.js'
  );
  if (opts.initData !== undefined)
    throw new FlagError(
      '--init-data: cloister train makes its own init-data from the job (launch the TEE with what --print-init-data prints)',
    );
  const prepared = await prepareJob(jobPath, command);
  if (opts.printInitData) {
    // No newline: the host hashes the file as it is, and the digest must be that of these bytes.
    process.stdout.write(prepared.initData.body);
    process.stderr.write(
      `job ${prepared.parsed.job}\ntrainer ${prepared.trainerDigest}\nrecipients ${prepared.recipients.join(' ')}\n`,
    );
    return 0;
  }
  const outputDir = opts.outputDir ?? join(dirname(resolve(jobPath)), 'out');
  const tee = await teeFor(opts, log, prepared.initData);
  const broker = await brokerFor(opts, tee, prepared.initData);
  let metrics: WriteStream | undefined;
  const metricsPath = opts.metrics === false ? undefined : (opts.metrics ?? join(outputDir, 'metrics.jsonl'));
  const tty = process.stderr.isTTY && !opts.quiet;
  const tracker = new ThroughputTracker();
  const metricsLog = new MetricsLog((line) => metrics?.write(line));
  let lastLine = 0;
  try {
    const result = await runTrainingJob(prepared, {
      broker,
      tee: { kind: tee.kind, attester: tee.attester },
      outputDir,
      privateDir: { parent: opts.privateDir, allowDisk: opts.allowDisk === true },
      log,
      ...(stopAfter !== undefined ? { stopAfterSteps: stopAfter } : {}),
      onStep: (e) => {
        const now = Date.now();
        tracker.record(e.step, e.tokens ?? e.examples, now);
        // A terminal gets a line redrawn in place; a log gets one line every 10 s.
        if (opts.quiet || now - lastLine < (tty ? 100 : 10_000)) return;
        lastLine = now;
        const rate = tracker.unitsPerSec;
        const eta = tracker.etaMs(e.totalSteps);
        const line = formatProgress({
          step: e.step,
          total: e.totalSteps,
          loss: e.loss,
          elapsedMs: e.elapsedMs,
          ...(rate === undefined
            ? {}
            : e.tokens !== undefined
              ? { tokensPerSec: rate }
              : { examplesPerSec: rate }),
          ...(eta === undefined ? {} : { etaMs: eta }),
        });
        if (tty) process.stderr.write(`\r${line}\x1b[K`);
        else process.stderr.write(`cloister train: ${line}\n`);
      },
      onMetrics: (m) => {
        if (!metricsPath) return;
        metrics ??= createWriteStream('', { fd: openMetrics(metricsPath) });
        metricsLog.record(m as { step: number });
      },
    });
    clearLine();
    return result.status;
  } finally {
    if (metrics) await new Promise<void>((r) => metrics!.end(r));
  }

  function clearLine() {
    if (process.stderr.isTTY && !opts.quiet) process.stderr.write('\r\x1b[K');
  }
}
