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
import { createCipheriv, createHash, type Hash, randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { BodyContext, Recipient } from '../seal/index.js';
import { beginSeal, openBytes, parseHeader, sealParts } from '../seal/index.js';
import { bestChunkCipher } from '../seal/node.js';
import type { ConfinedDir } from '../tee/index.js';
import type { CheckpointRecord } from '../tee/training-receipt.js';
import { canonicalizeBytes, utf8 } from '../util/index.js';
import { TrainError } from './errors.js';
import type { HashReply, HashRequest } from './hash-worker.js';

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
  /** GMAC (hex of IV ‖ tag) under the job's checkpoint key of the rest of the metadata and the state. */
  mac: string;
}

/**
 * The MAC of a checkpoint: AES-256-GMAC under the job's checkpoint key of u32be(length) ‖ the metadata
 * without the MAC (JCS) ‖ the state, as hex of IV ‖ tag. GMAC rather than HMAC-SHA-256 because it runs
 * at the cipher's speed (GHASH): a second SHA-256 pass over a large state would cost more than sealing
 * it. A fresh random IV per checkpoint (96 bits), as GMAC needs.
 */
function macOf(
  key: Uint8Array,
  meta: Omit<CheckpointMeta, 'mac'>,
  state: Uint8Array,
  iv = randomBytes(12),
): string {
  const { mac: _, ...rest } = meta as CheckpointMeta;
  const m = canonicalizeBytes(rest);
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, m.length);
  const g = createCipheriv('aes-256-gcm', key, iv);
  g.setAAD(length);
  g.setAAD(m);
  // setAAD takes at most 2^31 - 1 bytes at once; a state may be larger (the training API takes 4 GiB).
  for (let at = 0; at < state.length; at += AAD_PIECE) g.setAAD(state.subarray(at, at + AAD_PIECE));
  g.final();
  return Buffer.concat([iv, g.getAuthTag()]).toString('hex');
}

const AAD_PIECE = 1 << 30;

/** Whether `mac` (hex of IV ‖ tag) is the MAC of the metadata and state under `key`. */
function macVerifies(key: Uint8Array, meta: CheckpointMeta, state: Uint8Array): boolean {
  if (typeof meta.mac !== 'string' || !/^[0-9a-f]{56}$/.test(meta.mac)) return false;
  const given = Buffer.from(meta.mac, 'hex');
  const expected = Buffer.from(macOf(key, meta, state, given.subarray(0, 12)), 'hex');
  return timingSafeEqual(given, expected);
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
  counter: CheckpointCounter;
  /**
   * States at least this large are hashed on a worker thread while they are sealed and written;
   * default HASH_WORKER_BYTES (starting a worker costs tens of milliseconds, a 64 MiB hash about as much).
   */
  hashWorkerBytes?: number;
}

export interface Resumed {
  record: CheckpointRecord;
  state: Uint8Array;
}

const FILE = /^ckpt-(\d{6,})\.sealed$/;
const fileName = (n: number) => `ckpt-${String(n).padStart(6, '0')}.sealed`;
const short = (h: string) => `${h.slice(0, 12)}…`;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * The plaintext of a checkpoint is u32be(length of meta) ‖ meta (JCS) ‖ state; this is its first part.
 * The state is sealed from where it lies, never copied behind it (see save).
 */
function encodeHead(meta: CheckpointMeta): Uint8Array {
  const m = canonicalizeBytes(meta);
  const out = new Uint8Array(4 + m.length);
  new DataView(out.buffer).setUint32(0, m.length);
  out.set(m, 4);
  return out;
}

/**
 * Writes the sealed pieces in order at their offsets, hashing each: one write in flight on libuv's
 * threads while this thread seals and hashes the next piece, so the three overlap.
 */
async function writeHashed(fh: FileHandle, pieces: AsyncIterable<Uint8Array>, hash: Hash): Promise<void> {
  let position = 0;
  let inFlight: Promise<void> | undefined;
  try {
    for await (const piece of pieces) {
      hash.update(piece);
      if (inFlight) await inFlight;
      inFlight = writeAll(fh, piece, position);
      position += piece.length;
    }
    await inFlight;
  } catch (e) {
    // Never leave a write running on a handle the caller is about to close and remove.
    await inFlight?.catch(() => {});
    throw e;
  }
}

export const HASH_WORKER_BYTES = 64 * 1024 * 1024;
/** Sealed batches (4 MiB each) between the cipher, the writes and the hashing worker. */
const RING_SLOTS = 4;
/** A hashing worker idle this long is stopped; large checkpoints recur, and starting one costs ~30 ms. */
const HASH_WORKER_IDLE_MS = 60_000;
const HASH_WORKER = new URL('./hash-worker.js', import.meta.url);
// Run from TypeScript sources (the tests), there is no compiled worker to start: hash in this thread.
let hashWorkerBuilt: boolean | undefined;
const canHashOffThread = () => (hashWorkerBuilt ??= existsSync(fileURLToPath(HASH_WORKER)));

/**
 * A worker thread (hash-worker.ts) that hashes sealed checkpoints, kept between the saves of a store
 * and stopped when idle. Between saves it does not keep the process alive; one that failed is dropped.
 */
class HashWorker {
  private worker: Worker | undefined;
  private idle: NodeJS.Timeout | undefined;
  /** Replies come in the order of the requests that expect one. */
  private readonly replies: { resolve: (r: HashReply) => void; reject: (e: Error) => void }[] = [];

  /** Starts a hash (and the worker, if none is running). */
  begin(): void {
    clearTimeout(this.idle);
    if (!this.worker) {
      const w = new Worker(HASH_WORKER);
      w.on('message', (r: HashReply) => this.replies.shift()?.resolve(r));
      w.on('error', (e) => this.drop(w, e));
      w.on('exit', (code) => this.drop(w, new Error(`the checkpoint hashing worker stopped (exit ${code})`)));
      this.worker = w;
    }
    // Held while a save waits on it (an unreferenced worker's answer would not keep the process up).
    this.worker.ref();
    this.post({ begin: true });
  }

  post(m: HashRequest): void {
    this.worker?.postMessage(m);
  }

  /** Posts a request that is answered; rejects if the worker fails first. */
  ask(m: HashRequest): Promise<HashReply> {
    const w = this.worker;
    if (!w) return Promise.reject(new Error('the checkpoint hashing worker is not running'));
    return new Promise((resolve, reject) => {
      this.replies.push({ resolve, reject });
      w.postMessage(m);
    });
  }

  /** The hash is over: keep the worker for the next save a while, or stop it after a failure. */
  end(ok: boolean): void {
    const w = this.worker;
    if (!w) return;
    if (!ok) {
      this.drop(w, new Error('the checkpoint was not completed'));
      void w.terminate();
      return;
    }
    w.unref();
    this.idle = setTimeout(() => {
      this.drop(w, new Error('the checkpoint hashing worker was idle'));
      void w.terminate();
    }, HASH_WORKER_IDLE_MS);
    this.idle.unref();
  }

  private drop(w: Worker, e: Error): void {
    if (this.worker !== w) return;
    this.worker = undefined;
    for (const r of this.replies.splice(0)) r.reject(e);
  }
}

/**
 * writeHashed for large states, with the hash off this thread: the cipher seals each batch into a
 * slot of a shared ring, libuv's threads write it, the worker hashes it, and a slot is reused once
 * both are done. This thread keeps the cipher alone, several times faster than SHA-256; the hash, the
 * one pass that cannot be split, runs beside it. Returns the hex digest of everything written.
 */
async function writeHashedOffThread(
  fh: FileHandle,
  ctx: BodyContext,
  parts: Uint8Array[],
  hasher: HashWorker,
): Promise<string> {
  hasher.begin();
  let ring: SharedArrayBuffer | undefined;
  let slotBytes = 0;
  let handed = 0;
  let current: { slot: number; view: Uint8Array } | undefined;
  const busy: Promise<unknown>[] = [];
  const into = async (length: number): Promise<Uint8Array> => {
    if (!ring) {
      // The first batch is the largest: every one but the last is a full batch.
      slotBytes = length;
      ring = new SharedArrayBuffer(slotBytes * RING_SLOTS);
      hasher.post({ ring, slotBytes });
    }
    if (length > slotBytes) throw new RangeError('a sealed batch is larger than the first one');
    const slot = handed++ % RING_SLOTS;
    await busy[slot];
    current = { slot, view: new Uint8Array(ring, slot * slotBytes, length) };
    return current.view;
  };
  let position = 0;
  let ok = false;
  try {
    for await (const piece of sealParts(ctx, parts, into)) {
      if (piece === current?.view) {
        const done = Promise.all([
          hasher.ask({ slot: current.slot, length: piece.length }),
          writeAll(fh, piece, position),
        ]);
        done.catch(() => {}); // awaited when the slot is reused or at the end
        busy[current.slot] = done;
      } else {
        hasher.post({ bytes: piece.slice() }); // the header: small, carried in the message
        await writeAll(fh, piece, position);
      }
      position += piece.length;
    }
    await Promise.all(busy);
    const reply = await hasher.ask({ end: true });
    if (!('digest' in reply)) throw new Error('the checkpoint hashing worker answered out of turn');
    ok = true;
    return reply.digest;
  } catch (e) {
    // Never leave a write running on a handle the caller is about to close and remove.
    await Promise.allSettled(busy);
    throw e;
  } finally {
    hasher.end(ok);
  }
}

async function writeAll(fh: FileHandle, b: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < b.length; ) {
    const { bytesWritten } = await fh.write(b, done, b.length - done, position + done);
    done += bytesWritten;
  }
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
  private hasher: HashWorker | undefined;

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
    // Opened only with the job's own recipient keys: a file sealed to another key (one its maker
    // holds) is refused before any key is asked for.
    const sealedTo = parseHeaderOf(sealed, what)
      .recipients.filter((r) => r.type === 'kbs')
      .map((r) => r.keyId);
    const mine = this.o.recipients.flatMap((r) => (r.type === 'kbs' ? [r] : []));
    const key = mine.find((r) => sealedTo.includes(r.uri));
    if (!key || sealedTo.some((u) => !mine.some((r) => r.uri === u)))
      throw new TrainError(
        'checkpoint-chain',
        `${what} is sealed to ${sealedTo.join(', ') || 'no key-broker key'}, not to the job's recipients (${mine.map((r) => r.uri).join(', ')})`,
      );
    let plain: Uint8Array;
    try {
      plain = await openBytes(sealed, { kind: 'kek', uri: key.uri, secret: key.kek });
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
    if (!macVerifies(this.o.macKey, meta, state))
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
    const unsigned: Omit<CheckpointMeta, 'mac'> = {
      type: CHECKPOINT_TYPE,
      job: this.o.job,
      number,
      step,
      prev: prev?.sealedSha256 ?? null,
      trainer: this.o.trainer,
      history: this.chain,
    };
    const meta: CheckpointMeta = { ...unsigned, mac: macOf(this.o.macKey, unsigned, state) };
    // Sealed batch by batch from the state where it lies and written as it is sealed, hashing each
    // sealed piece on the way: a whole sealed copy in memory, a joined plaintext and a second pass to
    // hash cost several times what the cipher does (bench/train.js, checkpoint_seal_vs_seal).
    const head = encodeHead(meta);
    const name = fileName(number);
    let sealedSha256 = '';
    try {
      const ctx = await beginSeal({
        recipients: this.o.recipients,
        name: name.replace(/\.sealed$/, ''),
        cipher: bestChunkCipher(),
        plaintextLength: head.length + state.length,
      });
      await this.o.dir.writeFile(name, 0o644, async (fh) => {
        if (state.length >= (this.o.hashWorkerBytes ?? HASH_WORKER_BYTES) && canHashOffThread()) {
          this.hasher ??= new HashWorker();
          sealedSha256 = await writeHashedOffThread(fh, ctx, [head, state], this.hasher);
        } else {
          const hash = createHash('sha256');
          await writeHashed(fh, sealParts(ctx, [head, state]), hash);
          sealedSha256 = hash.digest('hex');
        }
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC')
        throw new TrainError(
          'no-space',
          `cannot write checkpoint ${this.o.dir.shown}/${name}: no space left`,
        );
      throw e;
    } finally {
      head.fill(0);
    }
    const record: CheckpointRecord = { number, step, sealedSha256, prev: meta.prev };
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
