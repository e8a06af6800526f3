/**
 * Training job manifests (docs/training.md, "The job file"): what to train, on what, with which
 * trainer, and to whom the result belongs. Parsed by hand rather than by a schema library so that
 * every refusal names the field as the user wrote it (`inputs[1].sha256`) in one line. Web-standard.
 *
 * The job's identity is the SHA-256 of the file's exact bytes: that is what the TEE's init-data,
 * the broker's checkpoint counter and the receipt all name, so a job cannot be edited and still
 * resume from the old job's checkpoints.
 */
import { toHex } from '../util/index.js';
import { TrainError } from './errors.js';

export const MANIFEST_VERSION = 1;

export interface SealedRef {
  /** Path of the sealed file, relative to the manifest's folder unless absolute. */
  path: string;
  /** Lower-case hex SHA-256 of the sealed file's bytes. */
  sha256: string;
}

export interface ManifestInput extends SealedRef {
  /** The input's name: the trainer and the training API know it by this. */
  name: string;
}

export interface PinnedFile {
  path: string;
  /** Optional pin: the job is refused when the file's SHA-256 differs. */
  sha256?: string;
}

export type BuiltinName = (typeof BUILTIN_TRAINERS)[number];

export type ManifestTrainer = { builtin: BuiltinName } | { command: string[]; files: PinnedFile[] };

export interface Checkpointing {
  /** A checkpoint every this many steps (built-in trainers); 0 = none by steps. */
  everySteps: number;
  /** A checkpoint when this many minutes passed since the last one; 0 = none by time. */
  everyMinutes: number;
  /** Where sealed checkpoints go, relative to the manifest's folder unless absolute. */
  dir: string;
}

export interface Manifest {
  version: 1;
  name: string;
  inputs: ManifestInput[];
  model?: SealedRef;
  /**
   * A frozen base model (fine-tuning): the trainer reads it, nothing it writes contains it unless
   * `merged` says so; its owner is not a recipient of the job's outputs.
   */
  base?: SealedRef;
  trainer: ManifestTrainer;
  hyperparameters: Record<string, unknown>;
  seed: number;
  /** kbs:///repo/type/tag URIs; empty = the starting model's key (resolved by the runner). */
  recipients: string[];
  /** Fine-tuning: also output the base with the adapter merged in, sealed to the recipients and the base's owner. */
  merged: boolean;
  checkpoints: Checkpointing;
}

export interface ParsedManifest {
  manifest: Manifest;
  /** Lower-case hex SHA-256 of the file's bytes: the job's identity. */
  job: string;
}

export const BUILTIN_TRAINERS = ['mlp', 'llama', 'lora', 'lora-convert'] as const;
/** The built-in trainers that read a frozen base (and need one). */
export const BASE_TRAINERS: readonly BuiltinName[] = ['lora', 'lora-convert'];

const bad = (field: string, why: string) => new TrainError('bad-manifest', `job manifest: ${field} ${why}`);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function only(o: Record<string, unknown>, at: string, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k))
      throw bad(at ? `${at}.${k}` : k, `is not a known field (known: ${allowed.join(', ')})`);
  }
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.length === 0) throw bad(field, 'must be a non-empty string');
  return v;
}

function sha(v: unknown, field: string): string {
  if (typeof v !== 'string' || !/^[0-9a-f]{64}$/.test(v))
    throw bad(field, 'must be 64 lower-case hex digits (the SHA-256 of the sealed file: sha256sum FILE)');
  return v;
}

function sealedRef(v: unknown, field: string, extra: readonly string[] = []): SealedRef {
  if (!isRecord(v)) throw bad(field, 'must be an object {"path": …, "sha256": …}');
  only(v, field, ['path', 'sha256', ...extra]);
  return { path: str(v.path, `${field}.path`), sha256: sha(v.sha256, `${field}.sha256`) };
}

function nonNegative(v: unknown, field: string, integer: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v)))
    throw bad(field, `must be a ${integer ? 'whole number' : 'number'} ≥ 0`);
  return v;
}

function trainer(v: unknown): ManifestTrainer {
  if (!isRecord(v))
    throw bad(
      'trainer',
      `must be {"builtin": ${BUILTIN_TRAINERS.map((b) => `"${b}"`).join(' | ')}} or {"command": [...]}`,
    );
  if ('builtin' in v) {
    only(v, 'trainer', ['builtin']);
    if (!BUILTIN_TRAINERS.includes(v.builtin as BuiltinName))
      throw bad('trainer.builtin', `must be one of ${BUILTIN_TRAINERS.join(', ')}`);
    return { builtin: v.builtin as BuiltinName };
  }
  if ('command' in v) {
    only(v, 'trainer', ['command', 'files']);
    const c = v.command;
    if (!Array.isArray(c) || c.length === 0 || c.some((a) => typeof a !== 'string' || a.length === 0))
      throw bad('trainer.command', 'must be a non-empty array of non-empty strings');
    const files: PinnedFile[] = [];
    if (v.files !== undefined) {
      if (!Array.isArray(v.files)) throw bad('trainer.files', 'must be an array');
      for (const [i, f] of v.files.entries()) {
        const at = `trainer.files[${i}]`;
        if (typeof f === 'string') files.push({ path: str(f, at) });
        else if (isRecord(f)) {
          only(f, at, ['path', 'sha256']);
          files.push({
            path: str(f.path, `${at}.path`),
            ...(f.sha256 !== undefined ? { sha256: sha(f.sha256, `${at}.sha256`) } : {}),
          });
        } else throw bad(at, 'must be a path or {"path": …, "sha256": …}');
      }
    }
    return { command: c as string[], files };
  }
  throw bad('trainer', 'must name "builtin" or "command"');
}

/** Parses and checks a manifest; `bytes` are the file's exact bytes (their digest is the job id). */
export async function parseManifest(bytes: Uint8Array): Promise<ParsedManifest> {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new TrainError('bad-manifest', `job manifest is not JSON: ${(e as Error).message}`);
  }
  if (!isRecord(doc)) throw new TrainError('bad-manifest', 'job manifest must be a JSON object');
  only(doc, '', [
    '$schema',
    'version',
    'name',
    'inputs',
    'model',
    'base',
    'trainer',
    'hyperparameters',
    'seed',
    'outputs',
    'checkpoints',
  ]);
  if (doc.version !== MANIFEST_VERSION) throw bad('version', `must be ${MANIFEST_VERSION}`);
  const name = str(doc.name, 'name');
  if (!Array.isArray(doc.inputs)) throw bad('inputs', 'must be an array of {"name", "path", "sha256"}');
  const names = new Set<string>();
  const inputs = doc.inputs.map((x, i): ManifestInput => {
    const at = `inputs[${i}]`;
    const ref = sealedRef(x, at, ['name']);
    const n = str((x as Record<string, unknown>).name, `${at}.name`);
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(n)) throw bad(`${at}.name`, 'must be letters, digits, . _ -');
    if (names.has(n)) throw bad(`${at}.name`, `repeats the name ${JSON.stringify(n)}`);
    names.add(n);
    return { name: n, ...ref };
  });
  const model = doc.model === undefined ? undefined : sealedRef(doc.model, 'model');
  const base = doc.base === undefined ? undefined : sealedRef(doc.base, 'base');
  const t = trainer(doc.trainer);
  if ('builtin' in t && inputs.length === 0) throw bad('inputs', 'must name at least one sealed input');
  if ('builtin' in t) {
    const needsBase = BASE_TRAINERS.includes(t.builtin);
    if (needsBase && !base)
      throw bad(
        'base',
        `is needed by trainer.builtin ${t.builtin}: the sealed base model {"path", "sha256"}`,
      );
    if (!needsBase && base)
      throw bad(
        'base',
        `is for fine-tuning (trainer.builtin ${BASE_TRAINERS.join(' or ')}, or a command); trainer.builtin ${t.builtin} trains the whole model: name it as "model"`,
      );
    if (needsBase && model)
      throw bad('model', `is not read by trainer.builtin ${t.builtin}, which trains an adapter over "base"`);
  }
  const hp = doc.hyperparameters ?? {};
  if (!isRecord(hp)) throw bad('hyperparameters', 'must be an object');
  if (typeof doc.seed !== 'number' || !Number.isSafeInteger(doc.seed) || doc.seed < 0)
    throw bad('seed', 'must be a whole number ≥ 0');
  let recipients: string[] = [];
  if (doc.outputs !== undefined) {
    if (!isRecord(doc.outputs)) throw bad('outputs', 'must be an object {"recipients": [...]}');
    only(doc.outputs, 'outputs', ['recipients', 'merged']);
    const r = doc.outputs.recipients;
    if (!Array.isArray(r)) throw bad('outputs.recipients', 'must be an array of kbs:/// URIs');
    recipients = r.map((u, i) => {
      const s = str(u, `outputs.recipients[${i}]`);
      if (!/^kbs:\/\/\/[^/]+\/[^/]+\/[^/]+$/.test(s))
        throw bad(`outputs.recipients[${i}]`, 'must be kbs:///<repo>/<type>/<tag>');
      return s;
    });
  }
  if (recipients.length === 0 && !model)
    throw bad(
      'outputs.recipients',
      base
        ? "is needed for fine-tuning: the adapter belongs to whoever tunes, not to the base's owner"
        : 'is needed when there is no starting model (whose key is the default)',
    );
  const merged = isRecord(doc.outputs) ? doc.outputs.merged : undefined;
  if (merged !== undefined && typeof merged !== 'boolean')
    throw bad('outputs.merged', 'must be true or false');
  if (merged === true && !('builtin' in t && t.builtin === 'lora'))
    throw bad('outputs.merged', 'is for trainer.builtin lora (a LoRA merged into its base)');
  const c = doc.checkpoints ?? {};
  if (!isRecord(c)) throw bad('checkpoints', 'must be an object');
  only(c, 'checkpoints', ['everySteps', 'everyMinutes', 'dir']);
  const checkpoints: Checkpointing = {
    everySteps: c.everySteps === undefined ? 0 : nonNegative(c.everySteps, 'checkpoints.everySteps', true),
    everyMinutes:
      c.everyMinutes === undefined ? 10 : nonNegative(c.everyMinutes, 'checkpoints.everyMinutes', false),
    dir: c.dir === undefined ? 'checkpoints' : str(c.dir, 'checkpoints.dir'),
  };
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes.slice()));
  return {
    job: toHex(digest),
    manifest: {
      version: 1,
      name,
      inputs,
      ...(model ? { model } : {}),
      ...(base ? { base } : {}),
      trainer: t,
      hyperparameters: hp,
      seed: doc.seed,
      recipients,
      merged: merged === true,
      checkpoints,
    },
  };
}
