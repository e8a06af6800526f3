import { describe, expect, it } from 'vitest';
import { TranslogError } from '../../src/translog/errors.js';
import { generateNoteSigner } from '../../src/translog/note.js';
import {
  EMPTY_HEAD,
  MemoryLogStore,
  parseHead,
  prepareAppend,
  serializeHead,
} from '../../src/translog/store.js';
import { runLogStoreConformance } from './conformance.js';

runLogStoreConformance('memory', async () => {
  const store = new MemoryLogStore();
  return { store, append: (fields, signer) => store.append(fields, { signer }) };
});

runLogStoreConformance('memory without stored subtrees', async () => {
  const store = new MemoryLogStore(Number.POSITIVE_INFINITY);
  return { store, append: (fields, signer) => store.append(fields, { signer }) };
});

const entry = { kind: 'admin', tenant: 't', actor: 'admin@example', subject: 'kbs:///t/r/k', details: {} };

describe('writing', () => {
  it('a head survives JSON and is refused when malformed', async () => {
    const p = await prepareAppend(EMPTY_HEAD, [entry, entry, entry]);
    const back = parseHead(JSON.parse(JSON.stringify(serializeHead(p.head))));
    expect(serializeHead(back)).toEqual(serializeHead(p.head));
    expect(() => parseHead({ ...serializeHead(p.head), last: null })).toThrow(TranslogError);
    expect(() => parseHead({ size: 0, hashes: [], last: 'ab'.repeat(32) })).toThrow(TranslogError);
  });

  it('prepareAppend is pure and continues from the head it is given', async () => {
    const { signer } = await generateNoteSigner('w.example/log');
    const a = await prepareAppend(EMPTY_HEAD, [entry], { signer });
    const b = await prepareAppend(a.head, [entry, entry]);
    expect(b.entries.map((e) => e.index)).toEqual([1, 2]);
    expect(b.checkpoint).toBeUndefined();
    expect(a.checkpoint).toMatch(/^w\.example\/log\n1\n/);
    expect(b.nodes.map((n) => [n.level, n.index])).toEqual([[1, 0]]);
  });

  it('a store refuses an append prepared from a stale head (a lost race)', async () => {
    const store = new MemoryLogStore();
    const stale = await prepareAppend(await store.head(), [entry]);
    await store.append([entry]);
    expect(() => store.commit(stale)).toThrow(/prepared at size 0, but the log has 1/);
  });

  it('refuses malformed entry fields before anything is stored', async () => {
    const store = new MemoryLogStore();
    await expect(store.append([{ ...entry, kind: 'Not A Kind' }])).rejects.toThrow(/kind/);
    await expect(store.append([{ ...entry, time: 'yesterday' }])).rejects.toThrow(/RFC 3339/);
    await expect(
      store.append([{ ...entry, details: { x: Number.NaN } as unknown as Record<string, number> }]),
    ).rejects.toThrow(/canonicalisable/);
    expect(await store.size()).toBe(0);
  });
});
