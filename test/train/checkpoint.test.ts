/**
 * CheckpointStore.save on both of its paths, through the built output (dist/) because the hashing
 * worker of large states loads a compiled file (`npm test` builds first): sealed batch by batch from
 * the state where it lies, written as it is sealed, and hashed on the way (in this thread, or on the
 * worker beside the cipher). Both must give a file whose SHA-256 is the one recorded and broker-held,
 * and which a later run resumes to the same state.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type * as Tee from '../../src/tee/index.js';
import type * as Checkpoint from '../../src/train/checkpoint.js';
import { MemoryBroker } from './fake.js';

const dist = new URL('../../dist/', import.meta.url);
const { CheckpointStore } = (await import(new URL('train/checkpoint.js', dist).href)) as typeof Checkpoint;
const { ConfinedDir } = (await import(new URL('tee/index.js', dist).href)) as typeof Tee;

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const JOB = 'c'.repeat(64);
// More than two 4 MiB batches and not a whole one: the head straddles the first, the tail is short.
const STATE_BYTES = 9 * 1024 * 1024 + 3;

let shm: string;
let broker: MemoryBroker;
let recipients: { type: 'kbs'; uri: string; kek: Uint8Array }[];

beforeEach(async () => {
  shm = mkdtempSync('/dev/shm/cloister-ckpt-');
  broker = new MemoryBroker();
  const k = await broker.addKek('owner/model/key');
  recipients = [{ type: 'kbs', uri: 'kbs:///owner/model/key', kek: k.secret }];
});
afterEach(() => rmSync(shm, { recursive: true, force: true }));

async function store(hashWorkerBytes: number) {
  const dir = await ConfinedDir.open(join(shm, 'checkpoints'), true);
  const s = new CheckpointStore({
    dir,
    job: JOB,
    trainer: 'test',
    recipients,
    macKey: await broker.trainKey(JOB),
    counter: broker,
    hashWorkerBytes,
  });
  return { s, close: () => dir.close() };
}

describe('CheckpointStore.save', () => {
  for (const [path, hashWorkerBytes] of [
    ['hashing in this thread', Number.POSITIVE_INFINITY],
    ['hashing on a worker thread', 0],
  ] as const) {
    it(`seals, writes and records a chain a later run resumes (${path})`, async () => {
      const first = randomBytes(STATE_BYTES);
      const second = randomBytes(STATE_BYTES);
      const a = await store(hashWorkerBytes);
      const r1 = await a.s.save(first, 10);
      const r2 = await a.s.save(second, 20);
      await a.close();
      const file = (n: number) => readFileSync(join(shm, 'checkpoints', `ckpt-00000${n}.sealed`));
      expect(r1.sealedSha256).toBe(sha(file(1)));
      expect(r2.sealedSha256).toBe(sha(file(2)));
      expect(r2.prev).toBe(r1.sealedSha256);
      expect(broker.heads.get(JOB)).toEqual({ number: 2, sha256: r2.sealedSha256 });
      // Nothing left behind but the two checkpoints (no temporaries).
      expect(readdirSync(join(shm, 'checkpoints')).sort()).toEqual([
        'ckpt-000001.sealed',
        'ckpt-000002.sealed',
      ]);
      // The caller's state is untouched.
      expect(first.length).toBe(STATE_BYTES);

      const b = await store(hashWorkerBytes);
      const resumed = await b.s.resume();
      await b.close();
      expect(resumed?.record).toEqual(r2);
      expect(Buffer.from(resumed!.state).equals(second)).toBe(true);
    });
  }
});
