import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildLogEntry, KbsLogStore, signCheckpointNow } from '../../src/kbs/log.js';
import { SqliteStore } from '../../src/kbs/store/sqlite.js';
import { generateNoteSigner, TransparencyLog, verifyBundleLines } from '../../src/translog/index.js';
import { testKeys } from './helpers.js';

const N = 100_000;
const ORIGIN = 'cloister-kbs/log';

describe('audit export of a large log', () => {
  let store: SqliteStore | undefined;
  afterAll(async () => {
    await store?.close();
  });

  it(`exports ${N} entries with every inclusion proof, streamed, and verifies them as they come`, async () => {
    const keys = await testKeys();
    store = new SqliteStore(join(keys.dir, 'kbs.db'), { buildLogEntry, synchronous: 'NORMAL' });
    await store.migrate();
    const { signer, vkey } = await generateNoteSigner(ORIGIN);
    const logStore = new KbsLogStore(store);
    for (let i = 0; i < N; i += 2000) {
      await Promise.all(
        Array.from({ length: 2000 }, (_, k) =>
          store!.appendLog({
            kind: 'release',
            tenant: 'acme',
            actor: `ear:sub=sample:${i + k}`,
            subject: 'kbs:///acme/models/key',
            details: { n: i + k },
          }),
        ),
      );
      if (i % 25_000 === 0) await signCheckpointNow(store, logStore, ORIGIN, signer);
    }
    await signCheckpointNow(store, logStore, ORIGIN, signer);
    const log = new TransparencyLog(logStore, ORIGIN);
    // The export is consumed as it is produced, as an HTTP client reads it: nothing holds it whole.
    let bytes = 0;
    let maxChunk = 0;
    async function* lines(): AsyncGenerator<string> {
      for await (const chunk of log.exportLines({ inclusion: 'all', consistency: true })) {
        bytes += chunk.length;
        maxChunk = Math.max(maxChunk, chunk.length);
        yield* chunk.slice(0, -1).split('\n');
      }
    }
    const started = performance.now();
    const report = await verifyBundleLines(lines(), vkey);
    const seconds = (performance.now() - started) / 1000;
    process.stderr.write(
      `export+verify of ${N} entries with proofs: ${seconds.toFixed(1)} s, ${Math.round(bytes / 2 ** 20)} MiB\n`,
    );
    expect(report.errors).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.entries).toEqual({ from: 0, to: N });
    expect(report.inclusionProofs).toBe(N);
    expect(report.consistencyProofs).toBe(report.checkpoints.length - 1);
    // Produced in slices: no chunk is more than a few hundred entries' worth.
    expect(maxChunk).toBeLessThan(2 ** 20);
    expect(bytes).toBeGreaterThan(100 * 2 ** 20);
  }, 900_000);
});
