/**
 * `cloister train JOB` (Node-only): a training job run inside the TEE, from a manifest to sealed
 * outputs and a signed training receipt. docs/training.md.
 *
 * Order, and why (as `cloister run`, src/tee/run.ts):
 *   1. prepareJob reads the manifest and the trainer (the BYO trainer's files are read into memory
 *      and hashed here, and run from those bytes: the host cannot swap them after they were hashed);
 *      the job id and the trainer digest go into the TEE's init-data, so the evidence names both;
 *   2. the receipt key is made and bound (with the job id) into evidence before anything else;
 *   3. every sealed input is hashed and checked against the manifest before the broker is asked for
 *      a key, so a substituted input releases nothing;
 *   4. every KEK (inputs, starting model, recipients) is fetched before the first byte is unsealed;
 *   5. checkpoints are sealed before they leave memory and chained; the broker's counter refuses a
 *      rollback (checkpoint.ts);
 *   6. outputs are sealed only when training ended normally; the receipt is written and its digest
 *      appended to the broker's transparency log; the private directory is wiped on every path.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, realpath, writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { basename, dirname, isAbsolute, join, normalize, resolve } from 'node:path';
import type { Recipient } from '../seal/index.js';
import { openSealedPath, readHeader, type SealedPath } from '../seal/node.js';
import {
  ConfinedDir,
  type CpuAttester,
  type CpuKind,
  findProgram,
  KekCache,
  onTerminationSignal,
  PrivateDir,
  type PrivateDirOptions,
  parentDeathWrapper,
  type ResourceSource,
  type SealedOutput,
  sealInto,
  softwareIdentity,
  startGroupWatcher,
  type UnsealedFile,
  unsealInto,
} from '../tee/index.js';
import { MERGED_OUTPUT, type TrainingFacts, trainerDigest } from '../tee/training-receipt.js';
import { type BaseOutputs, trainInitData } from '../wire/index.js';
import { type CheckpointCounter, type CheckpointRecord, CheckpointStore } from './checkpoint.js';
import { TrainError } from './errors.js';
import { type BuiltinName, type Manifest, type ParsedManifest, parseManifest } from './manifest.js';
import type { TrainingSession } from './session.js';
import type { BuiltinTrainer, StepReport, TrainerInput } from './trainer.js';

/** What the job needs from the key broker: keys, the checkpoint counter and the receipt log. */
export interface TrainBroker extends ResourceSource, CheckpointCounter {
  appendReceipt(job: string, envelope: Uint8Array): Promise<{ logIndex: number; sha256: string }>;
  /** The job's checkpoint MAC key (32 bytes), given only to attested sessions of the job. */
  trainKey(job: string): Promise<Uint8Array>;
}

export interface TrainerFile {
  /** As the manifest names it, relative to the manifest's folder. */
  path: string;
  sha256: string;
  bytes: Uint8Array;
}

/** The trainer as the receipt names it; its digest is what key policies approve. */
export type TrainerIdentity =
  | { kind: 'builtin'; name: BuiltinName; software: { name: string; version: string; digest: string } }
  | {
      kind: 'command';
      argv: string[];
      program: { path: string; sha256: string };
      files: { path: string; sha256: string }[];
    };

export interface PreparedJob {
  manifestPath: string;
  /** The manifest's folder: relative paths in it are relative to this. */
  base: string;
  parsed: ParsedManifest;
  trainer: TrainerIdentity;
  /** `sha256:<hex>` of JCS(trainer): what the init-data and the receipt carry. */
  trainerDigest: string;
  /** Whom outputs and checkpoints are sealed to (kbs:/// URIs), as the init-data names them. */
  recipients: string[];
  /** The BYO trainer's files, read once. */
  files: TrainerFile[];
  /** Fine-tuning: what leaves the TEE besides checkpoints (the init-data names it for the base's owner). */
  baseOutputs?: BaseOutputs;
  /** The CoCo init-data the TEE launches with (sample TEE: set by the runner). */
  initData: { format: 'json'; body: string };
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A path in the manifest, resolved against its folder. */
const under = (base: string, p: string) => (isAbsolute(p) ? p : join(base, p));

async function trainerOf(
  m: Manifest,
  base: string,
  command: string[] | undefined,
): Promise<{ trainer: TrainerIdentity; files: TrainerFile[] }> {
  if ('builtin' in m.trainer) {
    if (command && command.length > 0)
      throw new TrainError(
        'bad-manifest',
        `job manifest: trainer.builtin is ${m.trainer.builtin}, but a command was given after --; name it in trainer.command instead`,
      );
    return {
      trainer: { kind: 'builtin', name: m.trainer.builtin, software: await softwareIdentity() },
      files: [],
    };
  }
  const argv = command && command.length > 0 ? command : m.trainer.command;
  if (command && command.length > 0 && JSON.stringify(command) !== JSON.stringify(m.trainer.command))
    throw new TrainError(
      'bad-manifest',
      `the command after -- (${command.join(' ')}) is not the manifest's trainer.command (${m.trainer.command.join(' ')})`,
    );
  const files: TrainerFile[] = [];
  for (const [i, f] of m.trainer.files.entries()) {
    const rel = normalize(f.path);
    if (isAbsolute(rel) || rel.startsWith('..'))
      throw new TrainError(
        'bad-manifest',
        `job manifest: trainer.files[${i}].path must be inside the manifest's folder, got ${f.path}`,
      );
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await readFile(join(base, rel)));
    } catch (e) {
      throw new TrainError(
        'bad-manifest',
        `job manifest: trainer.files[${i}]: cannot read ${f.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
    const digest = sha256(bytes);
    if (f.sha256 && f.sha256 !== digest)
      throw new TrainError(
        'trainer-digest',
        `trainer file ${f.path} has sha256 ${digest}, not the ${f.sha256} the manifest pins`,
      );
    files.push({ path: rel, sha256: digest, bytes });
  }
  // The program: one of the job's own files (run from its hashed copy), or a program of the TEE's
  // image found along a PATH of absolute folders only — never the manifest's folder, which the host
  // can change between the hash and the run.
  const own = files.find((f) => f.path === normalize(argv[0]!));
  let program: { path: string; sha256: string };
  if (own) program = { path: own.path, sha256: own.sha256 };
  else {
    if (argv[0]!.includes('/') && !isAbsolute(argv[0]!))
      throw new TrainError(
        'bad-manifest',
        `job manifest: trainer.command[0] ${argv[0]} is a relative path: list it in trainer.files, or name a program of the TEE's image`,
      );
    // Found along the PATH the trainer itself gets (not the runner's, which the host sets), and only
    // among the image's own programs: a file elsewhere could change between its hash and its run.
    const found = await realpath(await findProgram(argv[0]!, TRAINER_PATH));
    if (!SYSTEM_DIRS.some((d) => found.startsWith(d)))
      throw new TrainError(
        'bad-manifest',
        `job manifest: trainer.command[0] resolves to ${found}, not a program of the TEE's image (${SYSTEM_DIRS.join(', ')}): list it in trainer.files instead`,
      );
    program = { path: found, sha256: sha256(new Uint8Array(await readFile(found))) };
  }
  for (const [i, a] of argv.entries()) {
    if (i > 0 && (isAbsolute(a) || normalize(a).startsWith('..')))
      throw new TrainError(
        'bad-manifest',
        `job manifest: trainer.command[${i}] ${a} names a file outside the job: list the file in trainer.files and name it by its relative path`,
      );
  }
  return {
    trainer: { kind: 'command', argv, program, files: files.map(({ path, sha256 }) => ({ path, sha256 })) },
    files,
  };
}

/**
 * Whom the outputs and checkpoints are sealed to: the manifest's recipients, else the starting
 * model's key-broker recipients. A starting model's owner must be among them: a job may not seal
 * another owner's model to someone else.
 */
async function recipientsOf(m: Manifest, base: string): Promise<string[]> {
  if (m.base) {
    let header: Awaited<ReturnType<typeof readHeader>>['header'];
    try {
      header = (await readHeader(under(base, m.base.path))).header;
    } catch (e) {
      throw new TrainError('bad-input', `base: cannot read ${m.base.path}: ${(e as Error).message}`);
    }
    checkNotBaseOwner(m.recipients, header.recipients);
  }
  if (!m.model) return m.recipients;
  let header: Awaited<ReturnType<typeof readHeader>>['header'];
  try {
    header = (await readHeader(under(base, m.model.path))).header;
  } catch (e) {
    throw new TrainError('bad-input', `model: cannot read ${m.model.path}: ${(e as Error).message}`);
  }
  const owners = header.recipients.filter((r) => r.type === 'kbs').map((r) => r.keyId);
  if (owners.length === 0)
    throw new TrainError('bad-input', `model: ${m.model.path} has no key-broker recipient (kbs:///…)`);
  if (m.recipients.length === 0) return owners;
  const others = m.recipients.filter((r) => !owners.includes(r));
  if (others.length > 0)
    throw new TrainError(
      'bad-manifest',
      `job manifest: outputs.recipients names ${others.join(', ')}, not a key of the starting model's owner (${owners.join(', ')}): a job may not seal another owner's model to anyone else`,
    );
  return m.recipients;
}

/**
 * What a fine-tuning job makes (an adapter, checkpoints) comes from the company's data: the base's
 * owner holds none of its keys. A merged model, the one output that holds the base, goes to that
 * owner beside the recipients, by the runner, not by the manifest.
 */
function checkNotBaseOwner(
  recipients: readonly string[],
  baseRecipients: readonly { type: string; keyId: string }[],
): void {
  const owners = baseRecipients.filter((r) => r.type === 'kbs').map((r) => r.keyId);
  const shared = recipients.filter((r) => owners.includes(r));
  if (shared.length > 0)
    throw new TrainError(
      'bad-manifest',
      `job manifest: outputs.recipients names ${shared.join(', ')}, a key of the base model's owner: the adapter and checkpoints are made from the data and go to its owner, not to the base's`,
    );
}

/** A built-in trainer's hyperparameters, checked before anything is attested or unsealed. */
async function checkBuiltinHyperparameters(m: Manifest): Promise<void> {
  if (!('builtin' in m.trainer)) return;
  if (m.trainer.builtin === 'mlp')
    (await import('./mlp/hyperparameters.js')).checkHyperparameters(m.hyperparameters);
  // A starting model fixes the shape, so its fields are checked once the model is open.
  else if (m.trainer.builtin === 'llama' && !m.model)
    (await import('./llama/hyperparameters.js')).parseHyperparameters(m.hyperparameters);
  else if (m.trainer.builtin === 'lora')
    (await import('./lora/hyperparameters.js')).parseLoraHyperparameters(m.hyperparameters);
}

/** The trainer's PATH, and where its program is looked up. */
const TRAINER_PATH = '/usr/local/bin:/usr/bin:/bin';
/** Where the TEE image's programs live (read-only, measured with the image). */
const SYSTEM_DIRS = ['/usr/', '/bin/', '/sbin/', '/lib/', '/lib64/', '/opt/'];

/** Reads and checks the manifest and the trainer; nothing is asked of a broker or a TEE yet. */
export async function prepareJob(manifestPath: string, command?: string[]): Promise<PreparedJob> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(manifestPath));
  } catch (e) {
    throw new TrainError(
      'bad-manifest',
      `cannot read the job manifest ${manifestPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const parsed = await parseManifest(bytes);
  const base = dirname(await realpath(resolve(manifestPath)));
  const { trainer, files } = await trainerOf(parsed.manifest, base, command);
  await checkBuiltinHyperparameters(parsed.manifest);
  const recipients = await recipientsOf(parsed.manifest, base);
  const digest = await trainerDigest(trainer);
  const m = parsed.manifest;
  const baseOutputs: BaseOutputs | undefined = !m.base
    ? undefined
    : !('builtin' in m.trainer)
      ? 'files'
      : m.merged
        ? 'adapter,merged'
        : 'adapter';
  return {
    manifestPath,
    base,
    parsed,
    trainer,
    trainerDigest: digest,
    recipients,
    files,
    ...(baseOutputs ? { baseOutputs } : {}),
    initData: {
      format: 'json',
      body: trainInitData(
        parsed.job,
        digest,
        recipients,
        m.base && baseOutputs ? { sha256: m.base.sha256, outputs: baseOutputs } : undefined,
      ),
    },
  };
}

/** One step as the progress line and the metrics log see it. */
export interface StepEvent extends StepReport {
  totalSteps: number;
  elapsedMs: number;
}

export interface RunJobOptions {
  broker: TrainBroker;
  tee: { kind: CpuKind; attester: CpuAttester };
  /** Where sealed outputs and training-receipt.json go. */
  outputDir: string;
  privateDir: PrivateDirOptions;
  log: (line: string) => void;
  /** Every step of a built-in trainer. */
  onStep?: (e: StepEvent) => void;
  /** Every metrics record (built-in: each step and each evaluation; BYO: what the trainer reports). */
  onMetrics?: (m: Record<string, number>) => void;
  /** Built-in trainers: end as if killed after this many steps of this run (rehearsing a crash). */
  stopAfterSteps?: number;
  /** The built-in trainers; the CLI passes the registry (builtins.ts), tests may pass their own. */
  builtins: Record<string, (input: TrainerInput) => Promise<BuiltinTrainer>>;
  /** BYO trainers: serves the training API (api.ts) for the session on a Unix socket. */
  serveApi?: (socketPath: string, session: TrainingSession) => Promise<{ close(): Promise<void> }>;
  /** Signs the receipt (receipt.ts) with the job's attested key; returns the DSSE envelope's JSON bytes. */
  signReceipt: (facts: TrainingFacts, ear: string) => Promise<Uint8Array>;
  /** Grace period after forwarding a signal before the BYO trainer is killed; default 10 s. */
  killAfterMs?: number;
}

export interface JobResult {
  /** 0: trained and sealed; otherwise the exit status (a signal's 128+n, a trainer's status). */
  status: number;
  outputs: SealedOutput[];
  receiptPath?: string;
  logIndex?: number;
  checkpoints: CheckpointRecord[];
  metrics: Record<string, number>;
}

async function keysFor(p: PreparedJob, keys: KekCache): Promise<Recipient[]> {
  const out: Recipient[] = [];
  for (const uri of p.recipients) out.push({ type: 'kbs', uri, kek: (await keys.get(uri)).secret });
  return out;
}

/** Opens a sealed input and checks its digest against the manifest before any key is asked for. */
async function openChecked(path: string, expected: string, field: string): Promise<SealedPath> {
  let digest: string;
  try {
    const h = createHash('sha256');
    for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
    digest = h.digest('hex');
  } catch (e) {
    throw new TrainError(
      'bad-input',
      `${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  if (digest !== expected)
    throw new TrainError(
      'input-digest',
      `${field}: ${path} has sha256 ${digest}, not the ${expected} the manifest names: refusing it`,
    );
  return openSealedPath(path);
}

function noSpace(e: unknown, where: string): unknown {
  return (e as NodeJS.ErrnoException)?.code === 'ENOSPC'
    ? new TrainError('no-space', `no space left in ${where}; nothing was sealed`)
    : e;
}

/** Runs a prepared job in the TEE. */
export async function runJob(p: PreparedJob, o: RunJobOptions): Promise<JobResult> {
  const { manifest, job } = p.parsed;
  const keys = new KekCache(o.broker);
  const opened: ConfinedDir[] = [];
  const sealedInputs: SealedPath[] = [];
  let baseModel: SealedPath | undefined;
  let dir: PrivateDir | undefined;
  let macKey: Uint8Array = new Uint8Array(0);
  let stopSignal: NodeJS.Signals | undefined;
  let child: ReturnType<typeof spawn> | undefined;
  const offSignals = onTerminationSignal((sig) => {
    stopSignal ??= sig;
    if (child) {
      o.log(`${sig}: passing it to the trainer`);
      const group = -child.pid!;
      signalGroup(group, sig);
      setTimeout(() => signalGroup(group, 'SIGKILL'), o.killAfterMs ?? 10_000).unref();
    } else o.log(`${sig}: stopping after this step`);
  });
  try {
    o.log(`job ${manifest.name} (${job.slice(0, 12)}…), trainer ${describeTrainer(p.trainer)}`);
    o.log(`TEE: ${o.tee.kind} (${o.tee.attester.source})`);
    if (o.tee.attester.insecure)
      o.log('WARNING: the sample TEE is software only; never trust it with secrets');

    dir = await PrivateDir.create({ ...o.privateDir, warn: o.privateDir.warn ?? o.log });
    const outputs = await ConfinedDir.open(o.outputDir, true);
    opened.push(outputs);
    await outputs.checkTarget(RECEIPT_FILE);
    const ckptDir = await ConfinedDir.open(under(p.base, manifest.checkpoints.dir), true);
    opened.push(ckptDir);

    for (const [i, input] of manifest.inputs.entries())
      sealedInputs.push(await openChecked(under(p.base, input.path), input.sha256, `inputs[${i}]`));
    const model = manifest.model
      ? await openChecked(under(p.base, manifest.model.path), manifest.model.sha256, 'model')
      : undefined;
    baseModel = manifest.base
      ? await openChecked(under(p.base, manifest.base.path), manifest.base.sha256, 'base')
      : undefined;
    if (baseModel) {
      // The host may show another file than when the job was prepared: checked again on the one read.
      checkNotBaseOwner(p.recipients, baseModel.header.recipients);
    }
    if (model) {
      // The recipients came from the model's header when the job was prepared; the file checked
      // against the manifest's digest must say the same, or the host showed another file then.
      const owners = model.header.recipients.filter((r) => r.type === 'kbs').map((r) => r.keyId);
      if (!p.recipients.every((r) => owners.includes(r)))
        throw new TrainError(
          'input-digest',
          `model: ${manifest.model!.path} is sealed to ${owners.join(', ') || 'no key-broker key'}, not to ${p.recipients.join(', ')} as when the job was prepared`,
        );
    }

    o.log('attesting to the key broker');
    const ear = await o.broker.token();
    macKey = await o.broker.trainKey(job);
    for (const [i, s] of sealedInputs.entries()) await keys.forHeader(s.header, `inputs[${i}]`);
    if (model) await keys.forHeader(model.header, 'model');
    const baseKey = baseModel ? await keys.forHeader(baseModel.header, 'base') : undefined;
    const recipients = await keysFor(p, keys);
    o.log(
      `keys released; outputs and checkpoints sealed to ${recipients.map((r) => (r as { uri: string }).uri).join(', ')}`,
    );

    const inDir = join(dir.path, 'inputs');
    const outDir = join(dir.path, 'outputs');
    await mkdir(inDir, { mode: 0o700 });
    await mkdir(outDir, { mode: 0o700 });
    const unsealed: UnsealedFile[] = [];
    for (const [i, s] of sealedInputs.entries()) {
      const input = manifest.inputs[i]!;
      const name = safeName(s.header.name || basename(input.path).replace(/\.sealed$/, ''), input.name);
      const u = await unsealInto(s, `inputs[${i}]`, inDir, `${i}-${name}`, keys).catch((e) => {
        throw noSpace(e, dir!.path);
      });
      // Read twice (hash, then unseal): the second read must be the file the first one checked.
      if (u.sealedSha256 !== input.sha256)
        throw new TrainError('input-digest', `inputs[${i}]: ${input.path} changed while it was being read`);
      unsealed.push(u);
      o.log(`unsealed inputs[${i}] ${input.name} (${u.size} bytes)`);
    }
    let startModel: UnsealedFile | undefined;
    if (model) {
      const name = safeName(model.header.name || 'model', 'model');
      startModel = await unsealInto(model, 'model', dir.path, `model-${name}`, keys).catch((e) => {
        throw noSpace(e, dir!.path);
      });
      if (startModel.sealedSha256 !== manifest.model!.sha256)
        throw new TrainError(
          'input-digest',
          `model: ${manifest.model!.path} changed while it was being read`,
        );
      o.log(`unsealed the starting model (${startModel.size} bytes)`);
    }
    let base: UnsealedFile | undefined;
    if (baseModel) {
      const name = safeName(baseModel.header.name || 'base', 'base');
      base = await unsealInto(baseModel, 'base', dir.path, `base-${name}`, keys).catch((e) => {
        throw noSpace(e, dir!.path);
      });
      if (base.sealedSha256 !== manifest.base!.sha256)
        throw new TrainError('input-digest', `base: ${manifest.base!.path} changed while it was being read`);
      o.log(`unsealed the base model (${base.size} bytes); it stays in the TEE`);
    }

    const store = new CheckpointStore({
      dir: ckptDir,
      job,
      trainer: p.trainerDigest,
      recipients,
      macKey,
      counter: o.broker,
    });
    const startedAt = new Date();
    const run = 'builtin' in manifest.trainer ? runBuiltin : runCommand;
    const ended = await run(p, o, {
      store,
      dir,
      inputs: manifest.inputs.map((x, i) => ({ name: x.name, path: unsealed[i]!.path })),
      ...(startModel ? { startModel: { name: startModel.name, path: startModel.path } } : {}),
      ...(base ? { base: { name: base.name, path: base.path } } : {}),
      outDir,
      stopped: () => stopSignal,
      setChild: (c) => {
        child = c;
      },
    });
    const endedAt = new Date();
    const result: JobResult = {
      status: ended.status,
      outputs: [],
      checkpoints: store.chain,
      metrics: ended.metrics,
    };
    if (stopSignal) {
      o.log(
        `stopped by ${stopSignal}; not sealing outputs (resume from checkpoint ${store.latest?.number ?? 'none'})`,
      );
      result.status = 128 + (constants.signals[stopSignal] ?? 15);
      return result;
    }
    if (ended.status !== 0) return result;

    const produced = await ConfinedDir.open(outDir);
    opened.push(produced);
    const files = await produced.listFiles((rel, why) => o.log(`not sealed: outputs/${rel} is ${why}`));
    if (files.length === 0)
      throw new TrainError('trainer-failed', 'the trainer ended without writing any output');
    for (const rel of files) await outputs.checkTarget(`${rel}.sealed`);
    for (const rel of files) {
      // A merged model holds the base's weights: its owner gets it too (only a built-in fine-tuner
      // with outputs.merged, which the init-data announced to that owner, writes one).
      const to =
        ended.withBase.includes(rel) && baseKey && base
          ? [...recipients, { type: 'kbs' as const, uri: base.kbsUri, kek: baseKey.secret }]
          : recipients;
      const s = await sealInto(produced, rel, outputs, to).catch((e) => {
        throw noSpace(e, o.outputDir);
      });
      result.outputs.push(s);
      o.log(`sealed ${rel} → ${join(outputs.shown, s.file)}`);
    }
    const envelope = await o.signReceipt(
      {
        manifest: { sha256: job, name: manifest.name },
        inputs: unsealed.map((u, i) => ({
          name: manifest.inputs[i]!.name,
          sealedSha256: u.sealedSha256,
          kbs: u.kbsUri,
        })),
        ...(startModel
          ? { startModel: { name: 'model', sealedSha256: startModel.sealedSha256, kbs: startModel.kbsUri } }
          : {}),
        ...(base && p.baseOutputs
          ? {
              base: {
                name: 'base',
                sealedSha256: base.sealedSha256,
                kbs: base.kbsUri,
                outputs: p.baseOutputs,
              },
            }
          : {}),
        trainer: p.trainer,
        trainerDigest: p.trainerDigest,
        recipients: p.recipients,
        hyperparameters: manifest.hyperparameters,
        seed: manifest.seed,
        checkpoints: store.chain,
        metrics: ended.metrics,
        outputs: result.outputs,
        tee: { kind: o.tee.kind, insecure: o.tee.attester.insecure },
        startedAt: startedAt.toISOString(),
        endedAt: endedAt.toISOString(),
      },
      ear,
    );
    await outputs.writeFile(RECEIPT_FILE, 0o644, (fh) => fh.writeFile(envelope));
    result.receiptPath = join(outputs.shown, RECEIPT_FILE);
    o.log(`receipt: ${result.receiptPath}`);
    let appended: { logIndex: number; sha256: string };
    try {
      appended = await o.broker.appendReceipt(job, envelope);
    } catch (e) {
      // A result the broker would not record (another run's receipt came first, a refusal) is not
      // the job's result: nothing is left that looks complete.
      for (const s of result.outputs) await outputs.remove(s.file);
      await outputs.remove(RECEIPT_FILE);
      throw e;
    }
    result.logIndex = appended.logIndex;
    o.log(
      `receipt sha256 ${appended.sha256} appended to the broker's transparency log (entry ${appended.logIndex})`,
    );
    return result;
  } finally {
    offSignals();
    for (const d of opened) await d.close();
    for (const s of sealedInputs) await s.close();
    await baseModel?.close();
    dir?.wipe();
    macKey.fill(0);
    await keys.clear();
  }
}

export const RECEIPT_FILE = 'training-receipt.json';
/** The exit status of a job stopped on purpose (--stop-after): EX_TEMPFAIL, "try again", i.e. resume. */
export const EXIT_STOPPED = 75;

function describeTrainer(t: TrainerIdentity): string {
  return t.kind === 'builtin' ? `built-in ${t.name}` : t.argv.join(' ');
}

function safeName(name: string, fallback: string): string {
  const n = basename(name).replace(/[^A-Za-z0-9._-]/g, '_');
  return n && n !== '.' && n !== '..' ? n : fallback;
}

function signalGroup(group: number, sig: NodeJS.Signals): void {
  try {
    process.kill(group, sig);
  } catch {
    // The group is gone already.
  }
}

interface Stage {
  store: CheckpointStore;
  dir: PrivateDir;
  inputs: { name: string; path: string }[];
  startModel?: { name: string; path: string };
  base?: { name: string; path: string };
  outDir: string;
  stopped: () => NodeJS.Signals | undefined;
  setChild: (c: ReturnType<typeof spawn> | undefined) => void;
}

interface Ended {
  status: number;
  metrics: Record<string, number>;
  /** Output files (relative to outputs/) that hold the base's weights (ModelFile.withBase). */
  withBase: string[];
}

async function runBuiltin(p: PreparedJob, o: RunJobOptions, s: Stage): Promise<Ended> {
  const { manifest } = p.parsed;
  const name = (manifest.trainer as { builtin: string }).builtin;
  const factory = o.builtins[name];
  if (!factory)
    throw new TrainError('bad-manifest', `job manifest: trainer.builtin ${name} is not available here`);
  const trainer = await factory({
    inputs: s.inputs,
    ...(s.startModel ? { startModel: s.startModel } : {}),
    ...(s.base ? { base: s.base, merged: manifest.merged } : {}),
    hyperparameters: manifest.hyperparameters,
    seed: manifest.seed,
  });
  try {
    const resumed = await s.store.resume();
    if (resumed) {
      try {
        trainer.loadState(resumed.state);
      } catch (e) {
        throw new TrainError(
          'checkpoint-state',
          `checkpoint ${resumed.record.number} does not fit this trainer: ${(e as Error).message}`,
        );
      } finally {
        resumed.state.fill(0);
      }
      o.log(`resumed from checkpoint ${resumed.record.number} (step ${resumed.record.step})`);
    } else {
      const before = await trainer.evaluate();
      o.onMetrics?.({ step: 0, ...before });
      o.log(`untrained: ${formatMetrics(before)}`);
    }
    const every = manifest.checkpoints;
    const started = Date.now();
    let lastCheckpoint = started;
    let steps = 0;
    let last: StepReport | undefined;
    while (trainer.completedSteps < trainer.totalSteps) {
      if (s.stopped()) {
        // A clean stop keeps the work done: one more checkpoint, then out.
        if (last && s.store.latest?.step !== last.step) await s.store.save(trainer.saveState(), last.step);
        return { status: 1, metrics: {}, withBase: [] };
      }
      last = await trainer.step();
      steps++;
      o.onStep?.({ ...last, totalSteps: trainer.totalSteps, elapsedMs: Date.now() - started });
      o.onMetrics?.({ step: last.step, loss: last.loss });
      const due =
        (every.everySteps > 0 && last.step % every.everySteps === 0) ||
        (every.everyMinutes > 0 && Date.now() - lastCheckpoint >= every.everyMinutes * 60_000);
      if (due && last.step < trainer.totalSteps) {
        const r = await s.store.save(trainer.saveState(), last.step);
        lastCheckpoint = Date.now();
        o.log(`checkpoint ${r.number} at step ${r.step} sealed`);
      }
      if (o.stopAfterSteps !== undefined && steps >= o.stopAfterSteps) {
        o.log(`stopping after ${steps} steps as asked (--stop-after)`);
        return { status: EXIT_STOPPED, metrics: {}, withBase: [] };
      }
    }
    const final = await trainer.evaluate();
    const metrics = { step: trainer.completedSteps, ...(last ? { loss: last.loss } : {}), ...final };
    o.onMetrics?.(metrics);
    o.log(`trained: ${formatMetrics(final)}`);
    const withBase: string[] = [];
    for (const f of await trainer.exportModel()) {
      if (f.withBase && !manifest.merged)
        throw new TrainError(
          'trainer-failed',
          `the trainer exported ${f.name}, which holds the base, without outputs.merged`,
        );
      const name = safeName(f.name, 'model');
      // The receipt's verifier lets the base's owner hold exactly this one output.
      if (f.withBase && `${name}.sealed` !== MERGED_OUTPUT)
        throw new TrainError(
          'trainer-failed',
          `the trainer exported the base as ${f.name}, not as the merged model`,
        );
      if (f.withBase) withBase.push(name);
      await writeFile(join(s.outDir, name), f.bytes, { mode: 0o600, flag: 'wx' }).catch((e) => {
        throw noSpace(e, s.dir.path);
      });
    }
    return { status: 0, metrics, withBase };
  } finally {
    trainer.dispose();
  }
}

function formatMetrics(m: Record<string, number>): string {
  return Object.entries(m)
    .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toPrecision(4)}`)
    .join(', ');
}

async function runCommand(p: PreparedJob, o: RunJobOptions, s: Stage): Promise<Ended> {
  const { manifest, job } = p.parsed;
  if (!o.serveApi) throw new TrainError('trainer-failed', 'no training API available for a command trainer');
  const trainer = p.trainer as Extract<TrainerIdentity, { kind: 'command' }>;
  // The trainer's files run from the bytes that were hashed, copied into the private directory.
  const work = join(s.dir.path, 'trainer');
  await mkdir(work, { mode: 0o700 });
  for (const f of p.files) {
    await mkdir(dirname(join(work, f.path)), { recursive: true, mode: 0o700 });
    await writeFile(join(work, f.path), f.bytes, { mode: 0o700 });
  }
  let resumed = await s.store.resume();
  let metrics: Record<string, number> = {};
  let finished: Record<string, number> | undefined;
  let refused: Error | undefined;
  const session: TrainingSession = {
    info: {
      job,
      name: manifest.name,
      hyperparameters: manifest.hyperparameters,
      seed: manifest.seed,
      inputs: Object.fromEntries(s.inputs.map((i) => [i.name, i.path])),
      outputDir: s.outDir,
      ...(s.startModel ? { startModel: s.startModel.path } : {}),
      ...(s.base ? { base: s.base.path } : {}),
    },
    async latest() {
      if (resumed) {
        const r = resumed;
        return { number: r.record.number, step: r.record.step, state: r.state };
      }
      return null;
    },
    async save(state, step) {
      let r: CheckpointRecord;
      try {
        r = await s.store.save(state, step);
      } catch (e) {
        // Another run of the job moved the broker's counter (a fork): this run's result is not the job's.
        if ((e as TrainError).code === 'checkpoint-rollback') refused = e as Error;
        throw e;
      }
      // What a resume would load from now on is what was just saved.
      resumed = { record: r, state: state.slice() };
      o.log(`checkpoint ${r.number} at step ${step} sealed`);
      return { number: r.number, sha256: r.sealedSha256 };
    },
    metrics(m) {
      metrics = { ...metrics, ...m };
      o.onMetrics?.(m);
    },
    finish(m) {
      finished = { ...metrics, ...(m ?? {}) };
    },
  };
  if (resumed)
    o.log(
      `checkpoint ${resumed.record.number} (step ${resumed.record.step}) is ready for the trainer to load`,
    );
  const socketPath = join(s.dir.path, 'train.sock');
  const api = await o.serveApi(socketPath, session);
  const watcher = startGroupWatcher(o.log);
  try {
    // A fixed environment, not the runner's: what the host sets (LD_PRELOAD, PYTHONPATH, …) would
    // otherwise change what the approved trainer runs without changing its digest.
    const env: NodeJS.ProcessEnv = {
      PATH: TRAINER_PATH,
      HOME: work,
      LANG: 'C.UTF-8',
      CLOISTER_TRAIN_SOCKET: socketPath,
      CLOISTER_PRIVATE_DIR: s.dir.path,
      CLOISTER_OUTPUT_DIR: s.outDir,
      CLOISTER_JOB: job,
    };
    if (s.base) env.CLOISTER_BASE = s.base.path;
    for (const i of s.inputs)
      env[`CLOISTER_INPUT_${i.name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`] = i.path;
    const pdeath = await parentDeathWrapper(env.PATH);
    if ('unavailable' in pdeath)
      o.log(`WARNING: no parent-death signal for the trainer: ${pdeath.unavailable}`);
    const argv = [
      ...('wrapper' in pdeath ? pdeath.wrapper : []),
      trainer.program.path,
      ...trainer.argv.slice(1),
    ];
    o.log(`running ${trainer.argv.join(' ')}`);
    const oldMask = process.umask(0o077);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res, rej) => {
      const c = spawn(argv[0]!, argv.slice(1), { env, cwd: work, stdio: 'inherit', detached: true });
      s.setChild(c);
      if (c.pid) watcher.arm(c.pid);
      c.once('error', (e) =>
        rej(
          new TrainError(
            'trainer-failed',
            `cannot run ${trainer.argv[0]}: ${(e as NodeJS.ErrnoException).code ?? e.message}`,
          ),
        ),
      );
      c.once('exit', (code, signal) => {
        signalGroup(-c.pid!, 'SIGKILL');
        res({ code, signal });
      });
    }).finally(() => process.umask(oldMask));
    s.setChild(undefined);
    const status = exit.code ?? 128 + (constants.signals[exit.signal!] ?? 0);
    if (s.stopped()) return { status, metrics, withBase: [] };
    if (status !== 0)
      throw new TrainError(
        'trainer-failed',
        `the trainer ${exit.signal ? `was ended by ${exit.signal}` : `exited with status ${status}`}; nothing was sealed (resume from checkpoint ${s.store.latest?.number ?? 'none'})`,
      );
    if (refused)
      throw new TrainError(
        'checkpoint-rollback',
        `the trainer exited 0, but the key broker refused one of its checkpoints (${refused.message}); nothing was sealed`,
      );
    if (!finished)
      throw new TrainError(
        'trainer-failed',
        'the trainer exited 0 without calling finish on the training API; nothing was sealed',
      );
    return { status: 0, metrics: finished, withBase: [] };
  } finally {
    watcher.release();
    await api.close();
    resumed?.state.fill(0);
  }
}
