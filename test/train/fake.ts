/** Test doubles for the job runner: a broker in memory and a deterministic toy trainer. */
import { createHash } from 'node:crypto';
import { sealBytes } from '../../src/seal/container.js';
import { generateKek, kekToJwk } from '../../src/seal/keys.js';
import type { TrainBroker } from '../../src/train/job.js';
import type { BuiltinTrainer, TrainerInput } from '../../src/train/trainer.js';
import { utf8 } from '../../src/util/bytes.js';

export class MemoryBroker implements TrainBroker {
  readonly keys = new Map<string, Uint8Array>();
  readonly keks = new Map<string, Uint8Array>();
  readonly asked: string[] = [];
  readonly heads = new Map<string, { number: number; sha256: string }>();
  readonly receipts: Uint8Array[] = [];
  deny = new Set<string>();

  async addKek(path: string) {
    const k = await generateKek(`kbs:///${path}`);
    this.keys.set(path, utf8.encode(JSON.stringify(kekToJwk(k))));
    this.keks.set(path, k.secret);
    return k;
  }
  async getResource(path: string) {
    this.asked.push(path);
    if (this.deny.has(path)) throw Object.assign(new Error(`policy denied ${path}`), { status: 403 });
    const v = this.keys.get(path);
    if (!v) throw Object.assign(new Error(`no resource ${path}`), { status: 404 });
    return v;
  }
  async token() {
    return 'eyJhbGciOiJub25lIn0.eyJlYXIudmVyaWZpZXItaWQiOnt9fQ.';
  }
  async checkpointLatest(job: string) {
    return this.heads.get(job) ?? null;
  }
  async checkpointAdvance(
    job: string,
    prev: { number: number; sha256: string } | null,
    next: { number: number; sha256: string },
  ) {
    const held = this.heads.get(job) ?? null;
    if (JSON.stringify(held) !== JSON.stringify(prev) || next.number !== (prev?.number ?? 0) + 1)
      throw Object.assign(new Error(`the broker holds checkpoint ${held?.number ?? 'none'}`), {
        status: 409,
        type: 'checkpoint-conflict',
      });
    this.heads.set(job, next);
  }
  /** One key per job, as the broker derives it. */
  async trainKey(job: string) {
    return new Uint8Array(createHash('sha256').update(`mac ${job}`).digest());
  }
  /** As a broker that already holds another run's receipt for the job. */
  refuseReceipts = false;
  async appendReceipt(_job: string, envelope: Uint8Array) {
    if (this.refuseReceipts)
      throw Object.assign(new Error('receipt-exists: this job already has a receipt'), { status: 409 });
    this.receipts.push(envelope);
    return { logIndex: this.receipts.length - 1, sha256: 'ab'.repeat(32) };
  }
}

/** Seals `text` to the KEK at `path` (kbs:///path). */
export async function sealText(broker: MemoryBroker, path: string, text: string, name: string) {
  return sealBytes(utf8.encode(text), {
    recipients: [{ type: 'kbs', uri: `kbs:///${path}`, kek: broker.keks.get(path)! }],
    name,
  });
}

/**
 * A toy trainer: its "parameter" follows a seeded recurrence over the input's bytes, so a resumed run
 * ends bit-identical to an uninterrupted one only if the state round trip is exact.
 */
export async function toyTrainer(input: TrainerInput): Promise<BuiltinTrainer> {
  const { readFile } = await import('node:fs/promises');
  const data = new Uint8Array(await readFile(input.inputs[0]!.path));
  const steps = Number(input.hyperparameters.steps ?? 10);
  let w = input.seed / 7;
  let done = 0;
  return {
    name: 'toy',
    totalSteps: steps,
    get completedSteps() {
      return done;
    },
    async step() {
      const x = data[done % data.length]!;
      w = Math.sin(w * 1.7 + x / 255) * 0.999;
      done++;
      return { step: done, loss: Math.abs(w), examples: 1 };
    },
    async evaluate() {
      return { heldout_loss: Math.abs(w) };
    },
    saveState() {
      const b = new Float64Array([done, w]);
      return new Uint8Array(b.buffer);
    },
    loadState(s) {
      if (s.length !== 16) throw new Error('not a toy state');
      const f = new Float64Array(s.slice().buffer);
      done = f[0]!;
      w = f[1]!;
    },
    async exportModel() {
      return [{ name: 'model.txt', bytes: utf8.encode(`w=${w}\n`) }];
    },
    dispose() {},
  };
}
