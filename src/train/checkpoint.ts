/**
 * Sealed checkpoints (Node-only; docs/training.md, "Checkpoints"). Each checkpoint is one sealed file
 * `ckpt-NNNNNN.sealed` in the job's checkpoint folder on host storage, sealed to the job's output
 * recipients, so that only a later attested run of a job those keys are released to (and the owner)
 * can open it. Its plaintext starts with metadata naming the job, its number, its step and the SHA-256
 * of its predecessor's sealed bytes (a hash chain, the whole history carried along), then the
 * trainer's state.
 *
 * Rollback: the host owns the folder and could put back an older checkpoint. The key broker keeps the
 * job's newest checkpoint (number and digest) and advances it only by compare-and-set, so a resume
 * from anything but the newest is refused. A checkpoint is written (renamed into place) before the
 * broker is told, so a crash between the two leaves the folder one ahead of the broker, which the
 * next run detects by the chain and catches up; the other way round would lock the job forever.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Recipient } from '../seal/index.js';
import { openBytes, parseHeader, sealBytes } from '../seal/index.js';
import { bestChunkCipher } from '../seal/node.js';
import type { ConfinedDir, KekCache } from '../tee/index.js';
import type { CheckpointRecord } from '../tee/training-receipt.js';
import { canonicalizeBytes, utf8 } from '../util/index.js';
import { TrainError } from './errors.js';

export type { CheckpointRecord };

export const CHECKPOINT_TYPE = 'cloister-checkpoint/v1';

interface CheckpointMeta {
  type: typeof CHECKPOINT_TYPE;
  job: string;
  number: number;
  step: number;
  prev: string | null;
  trainer: string;
  /** Every earlier checkpoint, oldest first. */
  history: CheckpointRecord[];
  /** HMAC-SHA-256 (hex) under the job's checkpoint key of the rest of the metadata and the state. */
  mac: string;
}

/** The MAC of a checkpoint: its metadata (without the MAC) and the SHA-256 of its state. */
function macOf(key: Uint8Array, meta: Omit<CheckpointMeta, 'mac'>, state: Uint8Array): string {
  const { mac: _, ...rest } = meta as CheckpointMeta;
  return createHmac('sha256', key)
    .update(canonicalizeBytes(rest))
    .update(createHash('sha256').update(state).digest())
    .digest('hex');
}

/** The broker's counter of a job's newest checkpoint (KbsClient implements it). */
export interface CheckpointCounter {
  checkpointLatest(job: string): Promise<{ number: number; sha256: string } | null>;
  /** Compare-and-set; throws when the broker holds another newest checkpoint than `prev`. */
  checkpointAdvance(
    job: string,
    prev: { number: number; sha256: string } | null,
    next: { number: number; sha256: string },
  ): Promise<void>;
}

export interface CheckpointStoreOptions {
  dir: ConfinedDir;
  job: string;
  /** The trainer's identity (builtin name or command digest): a state is only fed to its own trainer. */
  trainer: string;
  /** Whom checkpoints are sealed to (KEKs already released). */
  recipients: Recipient[];
  /**
   * The job's checkpoint key, which the broker gives only to attested sessions of this job: a holder
   * of a recipient's KEK can open a checkpoint, but cannot make one a later run would accept.
   */
  macKey: Uint8Array;
  keys: KekCache;
  counter: CheckpointCounter;
}

export interface Resumed {
  record: CheckpointRecord;
  state: Uint8Array;
}

const FILE = /^ckpt-(\d{6,})\.sealed$/;
const fileName = (n: number) => `ckpt-${String(n).padStart(6, '0')}.sealed`;
const short = (h: string) => `${h.slice(0, 12)}…`;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function encode(meta: CheckpointMeta, state: Uint8Array): Uint8Array {
  const m = canonicalizeBytes(meta);
  const out = new Uint8Array(4 + m.length + state.length);
  new DataView(out.buffer).setUint32(0, m.length);
  out.set(m, 4);
  out.set(state, 4 + m.length);
  return out;
}

function decode(plain: Uint8Array, what: string): { meta: CheckpointMeta; state: Uint8Array } {
  const fail = () => new TrainError('checkpoint-chain', `${what} is not a Cloister checkpoint`);
  if (plain.length < 4) throw fail();
  const n = new DataView(plain.buffer, plain.byteOffset).getUint32(0);
  if (4 + n > plain.length) throw fail();
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(utf8.decode(plain.subarray(4, 4 + n))) as CheckpointMeta;
  } catch {
    throw fail();
  }
  if (meta?.type !== CHECKPOINT_TYPE) throw fail();
  return { meta, state: plain.subarray(4 + n) };
}

export class CheckpointStore {
  private head: CheckpointRecord | null = null;
  private history: CheckpointRecord[] = [];

  constructor(private readonly o: CheckpointStoreOptions) {}

  /** Every checkpoint of the job so far, oldest first (the receipt's chain). */
  get chain(): CheckpointRecord[] {
    return this.head ? [...this.history, this.head] : [];
  }

  get latest(): CheckpointRecord | null {
    return this.head;
  }

  /**
   * Finds the newest checkpoint in the folder, checks it against the broker's counter and opens it.
   * Returns null for a job that has none (a fresh start); refuses a rollback, a fork, a checkpoint of
   * another job or trainer, and one that does not decrypt.
   */
  async resume(): Promise<Resumed | null> {
    const { dir, job, counter } = this.o;
    const numbers = (await dir.listFiles(() => {}))
      .map((f) => FILE.exec(f))
      // Exactly the names this store writes: "ckpt-0000005.sealed" is not checkpoint 5.
      .filter((m): m is RegExpExecArray => m !== null && m[0] === fileName(Number(m[1])))
      .map((m) => Number(m[1]))
      .sort((a, b) => b - a);
    const held = await counter.checkpointLatest(job);
    const newest = numbers[0];
    if (newest === undefined) {
      if (held)
        throw new TrainError(
          'checkpoint-rollback',
          `the key broker holds checkpoint ${held.number} (sha256 ${short(held.sha256)}) of this job, but ${dir.shown} has none: the host withheld or removed them`,
        );
      return null;
    }
    const name = fileName(newest);
    const what = `checkpoint ${dir.shown}/${name}`;
    const fh = await dir.openFile(name);
    let sealed: Uint8Array;
    try {
      sealed = new Uint8Array(await fh.readFile());
    } finally {
      await fh.close();
    }
    const digest = sha256(sealed);
    if (held && (held.number > newest || (held.number === newest && held.sha256 !== digest)))
      throw new TrainError(
        'checkpoint-rollback',
        `the key broker holds checkpoint ${held.number} (sha256 ${short(held.sha256)}) of this job; ${what} (sha256 ${short(digest)}) is older or another: refusing to roll back`,
      );
    let plain: Uint8Array;
    try {
      plain = await openBytes(sealed, await this.o.keys.forHeader(parseHeaderOf(sealed, what), what));
    } catch (e) {
      if (e instanceof TrainError) throw e;
      throw new TrainError('checkpoint-decrypt', `${what} does not decrypt: ${(e as Error).message}`);
    }
    const { meta, state } = decode(plain, what);
    if (meta.job !== job)
      throw new TrainError('checkpoint-chain', `${what} belongs to another job (${short(meta.job)})`);
    if (meta.trainer !== this.o.trainer)
      throw new TrainError('checkpoint-chain', `${what} was made by another trainer (${meta.trainer})`);
    if (meta.number !== newest)
      throw new TrainError('checkpoint-chain', `${what} says it is checkpoint ${meta.number}`);
    const mac = Buffer.from(macOf(this.o.macKey, meta, state), 'hex');
    const given = Buffer.from(typeof meta.mac === 'string' ? meta.mac : '', 'hex');
    if (given.length !== mac.length || !timingSafeEqual(given, mac))
      throw new TrainError(
        'checkpoint-chain',
        `${what} was not made by a run of this job (its MAC under the job's checkpoint key does not verify)`,
      );
    const record: CheckpointRecord = {
      number: newest,
      step: meta.step,
      sealedSha256: digest,
      prev: meta.prev,
    };
    const last = meta.history.at(-1);
    if ((last?.sealedSha256 ?? null) !== meta.prev || (last?.number ?? 0) !== newest - 1)
      throw new TrainError('checkpoint-chain', `${what}: its history does not end at its predecessor`);
    if ((held?.number ?? 0) < newest - 1)
      throw new TrainError(
        'checkpoint-chain',
        `${what} is more than one ahead of the checkpoint the key broker holds (${held ? held.number : 'none'}): it was not made by a run the broker saw`,
      );
    if (!held || held.number === newest - 1) {
      // One ahead of the broker: written, then the run ended before the broker was told.
      if ((held?.sha256 ?? null) !== meta.prev)
        throw new TrainError(
          'checkpoint-chain',
          `${what} does not follow the checkpoint the key broker holds (${held ? `${held.number}, sha256 ${short(held.sha256)}` : 'none'})`,
        );
      await this.advance(held, record, what);
    }
    this.history = meta.history;
    this.head = record;
    return { record, state };
  }

  /** Seals `state` as the next checkpoint, writes it, then advances the broker's counter. */
  async save(state: Uint8Array, step: number): Promise<CheckpointRecord> {
    const prev = this.head;
    const number = (prev?.number ?? 0) + 1;
    const unsigned = {
      type: CHECKPOINT_TYPE,
      job: this.o.job,
      number,
      step,
      prev: prev?.sealedSha256 ?? null,
      trainer: this.o.trainer,
      history: this.chain,
    } as const;
    const meta: CheckpointMeta = { ...unsigned, mac: macOf(this.o.macKey, unsigned, state) };
    const plain = encode(meta, state);
    let sealed: Uint8Array;
    try {
      sealed = await sealBytes(plain, {
        recipients: this.o.recipients,
        name: fileName(number).replace(/\.sealed$/, ''),
        cipher: bestChunkCipher(),
      });
    } finally {
      plain.fill(0);
    }
    const record: CheckpointRecord = { number, step, sealedSha256: sha256(sealed), prev: meta.prev };
    const name = fileName(number);
    try {
      await this.o.dir.writeFile(name, 0o644, (fh) => fh.writeFile(sealed));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC')
        throw new TrainError(
          'no-space',
          `cannot write checkpoint ${this.o.dir.shown}/${name}: no space left`,
        );
      throw e;
    }
    await this.advance(
      prev ? { number: prev.number, sha256: prev.sealedSha256 } : null,
      record,
      `checkpoint ${number}`,
    );
    if (prev) this.history.push(prev);
    this.head = record;
    return record;
  }

  private async advance(
    prev: { number: number; sha256: string } | null,
    next: CheckpointRecord,
    what: string,
  ): Promise<void> {
    try {
      await this.o.counter.checkpointAdvance(this.o.job, prev, {
        number: next.number,
        sha256: next.sealedSha256,
      });
    } catch (e) {
      if (
        (e as { type?: string }).type === 'checkpoint-conflict' ||
        (e as { status?: number }).status === 409
      )
        throw new TrainError(
          'checkpoint-rollback',
          `the key broker refused ${what}: ${(e as Error).message} (another run of this job may be going on)`,
        );
      throw e;
    }
  }
}

function parseHeaderOf(sealed: Uint8Array, what: string) {
  try {
    return parseHeader(sealed);
  } catch (e) {
    throw new TrainError('checkpoint-decrypt', `${what} is not a sealed file: ${(e as Error).message}`);
  }
}
