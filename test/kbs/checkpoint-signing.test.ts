/** Signed checkpoints of the KBS transparency log: what a signer signs while entries are appended. */
import { expect, it } from 'vitest';
import { buildLogEntry, KbsLogStore, signCheckpointNow } from '../../src/kbs/log.js';
import { MemoryStore } from '../../src/kbs/store/index.js';
import { generateNoteSigner, parseCheckpoint, TransparencyLog } from '../../src/translog/index.js';

const entry = (i: number) => ({ kind: 'release', tenant: 't', actor: 'tee', subject: `s${i}`, details: {} });

it('concurrent checkpoint signing never signs a root the log does not have', async () => {
  const store = new MemoryStore({ buildLogEntry });
  await store.migrate();
  const log = new KbsLogStore(store);
  const { signer } = await generateNoteSigner('test/log');
  for (let i = 0; i < 20; i++) await store.appendLog(entry(i));
  for (let round = 0; round < 10; round++) {
    const a = signCheckpointNow(store, log, 'test/log', signer);
    await Promise.resolve();
    const b = signCheckpointNow(store, log, 'test/log', signer);
    await store.appendLog(entry(100 + round));
    const c = signCheckpointNow(store, log, 'test/log', signer);
    await Promise.all([a, b, c]);
  }
  const truth = new TransparencyLog(log, 'test/log');
  for (const { note } of await store.checkpoints()) {
    const cp = parseCheckpoint(note);
    expect(Buffer.from(cp.root).equals(Buffer.from(await truth.root(cp.size)))).toBe(true);
  }
});
