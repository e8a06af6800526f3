/**
 * The contract every LogStore must meet, as a reusable vitest suite. The key broker's SQLite and
 * PostgreSQL stores run it with their own `make`:
 *
 *   runLogStoreConformance('sqlite', async () => {
 *     const db = openTestDb();
 *     return { store: sqliteLogStore(db), append: (fields, signer) => appendInTransaction(db, fields, signer) };
 *   });
 *
 * `append` must do what the broker does: in one transaction, read the head, `prepareAppend`, and write
 * entries, leaf hashes, nodes, head and checkpoint — refusing (or retrying) when another append won.
 */
import { describe, expect, it } from 'vitest';
import { formatBundle, verifyBundle, verifyBundleLines } from '../../src/translog/bundle.js';
import { verifyCheckpoint } from '../../src/translog/checkpoint.js';
import { entryLeafHash, type LogEntryFields } from '../../src/translog/entry.js';
import { verifyConsistency, verifyInclusion } from '../../src/translog/merkle.js';
import { generateNoteSigner, type NoteSigner } from '../../src/translog/note.js';
import { type LogStore, serializeHead, TransparencyLog } from '../../src/translog/store.js';
import { toHex } from '../../src/util/bytes.js';
import { referenceRoot } from './helpers.js';

export interface ConformanceSubject {
  store: LogStore;
  /** Appends the entries in one transaction and stores a checkpoint signed by `signer`. */
  append(fields: LogEntryFields[], signer: NoteSigner): Promise<unknown>;
  close?(): Promise<void>;
}

const ORIGIN = 'conformance.example/log';

function fields(n: number, tag: string): LogEntryFields[] {
  return Array.from({ length: n }, (_, i) => ({
    time: `2026-11-25T12:00:${String(i % 60).padStart(2, '0')}.123Z`,
    kind: i % 3 === 0 ? 'release' : i % 3 === 1 ? 'denial' : 'policy',
    tenant: `tenant-${i % 2}`,
    actor: `workload ${tag}/${i}`,
    subject: `kbs:///tenant-${i % 2}/repo/key-${i}`,
    details: { n: i, ratio: 1.5, note: 'é😀 "quoted"\n', nested: { list: [1, null, true, 'x'] }, empty: {} },
  }));
}

export function runLogStoreConformance(name: string, make: () => Promise<ConformanceSubject>): void {
  describe(`LogStore conformance: ${name}`, () => {
    async function withSubject(
      fn: (s: ConformanceSubject, signer: NoteSigner, vkey: string) => Promise<void>,
    ) {
      const subject = await make();
      const { signer, vkey } = await generateNoteSigner(ORIGIN);
      try {
        await fn(subject, signer, vkey);
      } finally {
        await subject.close?.();
      }
    }

    it('starts empty', () =>
      withSubject(async ({ store }) => {
        expect(await store.size()).toBe(0);
        expect(serializeHead(await store.head())).toEqual({ size: 0, hashes: [], last: null });
        expect(await store.getEntries(0, 0)).toEqual([]);
        expect(await store.getLeafHashes(0, 0)).toEqual([]);
        expect(await store.latestCheckpoint()).toBeUndefined();
        expect(await store.getCheckpoint(0)).toBeUndefined();
        expect(await store.checkpointSizes(0, 100)).toEqual([]);
      }));

    it('keeps entries, leaf hashes, head and checkpoints exactly as appended', () =>
      withSubject(async ({ store, append }, signer, vkey) => {
        const batches = [fields(1, 'a'), fields(4, 'b'), fields(20, 'c')];
        for (const b of batches) await append(b, signer);
        expect(await store.size()).toBe(25);
        const entries = await store.getEntries(0, 25);
        const all = batches.flat();
        entries.forEach((e, i) => {
          expect(e.index).toBe(i);
          const { index: _i, prevHash: _p, ...rest } = e;
          expect(rest).toEqual(all[i]);
        });
        const leaves = await store.getLeafHashes(0, 25);
        for (let i = 0; i < 25; i++) {
          expect(toHex(leaves[i]!)).toBe(toHex(await entryLeafHash(entries[i]!)));
          if (i > 0) expect(entries[i]!.prevHash).toBe(toHex(leaves[i - 1]!));
        }
        expect(await store.getEntries(3, 7)).toEqual(entries.slice(3, 7));
        expect(await store.getLeafHashes(24, 25)).toEqual([leaves[24]]);
        const head = await store.head();
        expect(head.range.size).toBe(25);
        expect(toHex(head.lastLeafHash!)).toBe(toHex(leaves[24]!));
        expect(await store.checkpointSizes(0, 25)).toEqual([1, 5, 25]);
        expect(await store.checkpointSizes(2, 24)).toEqual([5]);
        const latest = await verifyCheckpoint((await store.latestCheckpoint())!, vkey);
        expect(latest.size).toBe(25);
        expect(toHex(latest.root)).toBe(toHex(await referenceRoot(leaves)));
        expect((await verifyCheckpoint((await store.getCheckpoint(5))!, vkey)).size).toBe(5);
        expect(await store.getCheckpoint(6)).toBeUndefined();
      }));

    it('refuses reads beyond the log', () =>
      withSubject(async ({ store, append }, signer) => {
        await append(fields(3, 'a'), signer);
        await expect(store.getEntries(0, 4)).rejects.toThrow();
        await expect(store.getLeafHashes(2, 4)).rejects.toThrow();
        await expect(store.getEntries(2, 1)).rejects.toThrow();
      }));

    it('stored subtree hashes, where kept, are the true ones', () =>
      withSubject(async ({ store, append }, signer) => {
        await append(fields(37, 'a'), signer);
        if (!store.getNodeHashes) return;
        const leaves = await store.getLeafHashes(0, 37);
        const ids = [
          { level: 1, index: 0 },
          { level: 2, index: 3 },
          { level: 5, index: 0 },
          { level: 3, index: 4 },
        ];
        const got = await store.getNodeHashes(ids);
        for (const [i, id] of ids.entries()) {
          const h = got[i];
          if (h === undefined) continue;
          const w = 2 ** id.level;
          expect(toHex(h)).toBe(toHex(await referenceRoot(leaves.slice(id.index * w, (id.index + 1) * w))));
        }
        // Subtrees not yet complete are never reported.
        expect(
          (
            await store.getNodeHashes([
              { level: 3, index: 4 },
              { level: 6, index: 0 },
            ])
          )[1],
        ).toBeUndefined();
      }));

    it('serves roots and proofs that verify against its checkpoints, and exports verifiable bundles', () =>
      withSubject(async ({ store, append }, signer, vkey) => {
        for (const n of [3, 10, 1, 30]) await append(fields(n, `s${n}`), signer);
        const log = new TransparencyLog(store, ORIGIN, { batchLevel: 2, cacheMinLevel: 2 });
        const leaves = await store.getLeafHashes(0, 44);
        for (const size of [1, 13, 14, 44])
          expect(toHex(await log.root(size))).toBe(toHex(await referenceRoot(leaves.slice(0, size))));
        const cp = await verifyCheckpoint((await store.latestCheckpoint())!, vkey);
        for (const i of [0, 12, 43])
          await verifyInclusion(i, 44, leaves[i]!, await log.inclusionProof(i, 44), cp.root);
        const cp13 = await verifyCheckpoint((await store.getCheckpoint(13))!, vkey);
        await verifyConsistency(13, 44, cp13.root, cp.root, await log.consistencyProof(13, 44));
        const full = await log.export({ inclusion: [0, 20, 43], consistency: true });
        const report = await verifyBundle(full, vkey);
        expect(report.errors).toEqual([]);
        expect(report.ok).toBe(true);
        expect(report.checkpoints.map((c) => c.size)).toEqual([3, 13, 14, 44]);
        const part = await log.export({ from: 13, consistency: true });
        expect((await verifyBundle(part, vkey)).errors).toEqual([]);
        await expect(log.root(45)).rejects.toThrow();
      }));

    it('streams an export in the streamed layout, with the content of the in-memory one', () =>
      withSubject(async ({ store, append }, signer, vkey) => {
        for (const n of [3, 10, 1, 30, 3]) await append(fields(n, `s${n}`), signer);
        const log = new TransparencyLog(store, ORIGIN);
        for (const from of [0, 13]) {
          const chunks: string[] = [];
          for await (const c of log.exportLines({ from, inclusion: 'all', consistency: true })) {
            expect(c.endsWith('\n')).toBe(true);
            chunks.push(c);
          }
          const lines = chunks.join('').trimEnd().split('\n');
          const types = lines.map((l) => (JSON.parse(l) as { type: string }).type);
          const firstEntry = types.indexOf('entry');
          // Header, range, checkpoints and consistency proofs first; each entry then its proof.
          expect(types.slice(0, firstEntry).every((t) => t !== 'inclusion')).toBe(true);
          expect(types.slice(firstEntry).join(',')).toBe(
            Array(47 - from)
              .fill('entry,inclusion')
              .join(','),
          );
          expect(JSON.parse(lines[0]!)).toMatchObject({ layout: 'streamed', from, to: 47 });
          const report = await verifyBundleLines(lines, vkey);
          expect(report.errors).toEqual([]);
          expect(report.inclusionProofs).toBe(47 - from);
          const mem = formatBundle(await log.export({ from, inclusion: 'all', consistency: true }));
          const strip = (l: string) => l.replace(',"layout":"streamed"', '');
          expect(lines.map(strip).sort()).toEqual(mem.trimEnd().split('\n').sort());
        }
        // Proofs computed for a run of entries at once are those computed one at a time.
        const leaves = await store.getLeafHashes(0, 47);
        const cp = await verifyCheckpoint((await store.latestCheckpoint())!, vkey);
        const one = await Promise.all([0, 20, 31, 32, 46].map((i) => log.inclusionProof(i, 47)));
        const { proofs } = await log.export({ inclusion: [0, 20, 31, 32, 46] }).then((b) => ({
          proofs: b.inclusion.map((p) => p.proof),
        }));
        expect(proofs.map((p) => p.map(toHex))).toEqual(one.map((p) => p.map(toHex)));
        for (const [k, i] of [0, 20, 31, 32, 46].entries())
          await verifyInclusion(i, 47, leaves[i]!, one[k]!, cp.root);
        await expect(log.export({ from: 13, inclusion: [3] })).rejects.toMatchObject({ code: 'bad-proof' });
      }));

    it('keeps one unbroken chain under concurrent appends', () =>
      withSubject(async ({ store, append }, signer, vkey) => {
        const results = await Promise.allSettled(
          Array.from({ length: 5 }, (_, i) => append(fields(3, `c${i}`), signer)),
        );
        const done = results.filter((r) => r.status === 'fulfilled').length;
        expect(done).toBeGreaterThan(0);
        expect(await store.size()).toBe(3 * done);
        const log = new TransparencyLog(store, ORIGIN);
        const report = await verifyBundle(await log.export(), vkey);
        expect(report.errors).toEqual([]);
      }));
  });
}
