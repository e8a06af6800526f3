import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  formatBundle,
  parseBundle,
  readBundleLines,
  verifyBundle,
  verifyBundleLines,
  verifyEntryProof,
} from '../../src/translog/bundle.js';
import type { LogEntryFields } from '../../src/translog/entry.js';
import { TranslogError } from '../../src/translog/errors.js';
import { generateNoteSigner, type NoteSigner } from '../../src/translog/note.js';
import { MemoryLogStore, TransparencyLog } from '../../src/translog/store.js';

const ORIGIN = 'broker.example/log';

function records(from: number, to: number, tag: string): LogEntryFields[] {
  return Array.from({ length: to - from }, (_, k) => {
    const i = from + k;
    return {
      time: `2026-11-25T10:00:${String(i).padStart(2, '0')}Z`,
      kind: i % 2 ? 'release' : 'denial',
      tenant: 'acme',
      actor: `tee:${tag}:${i}`,
      subject: `kbs:///acme/models/key-${i}`,
      details: { i, reason: i % 2 ? 'ok' : 'policy: debug TEE' },
    };
  });
}

/** A log of 20 entries with checkpoints at 5, 12 and 20; `forkAt` makes entries from there differ. */
async function buildLog(signer: NoteSigner, forkAt = 20): Promise<TransparencyLog> {
  const store = new MemoryLogStore();
  const f = (a: number, b: number) => [
    ...records(a, Math.min(b, forkAt), 'a'),
    ...records(Math.max(a, forkAt), b, 'fork'),
  ];
  await store.append(f(0, 5), { signer });
  await store.append(f(5, 12), { signer });
  await store.append(f(12, 20), { signer });
  return new TransparencyLog(store, ORIGIN);
}

let signer: NoteSigner;
let vkey: string;
let log: TransparencyLog;
let text: string;
let lines: string[];

beforeAll(async () => {
  ({ signer, vkey } = await generateNoteSigner(ORIGIN));
  log = await buildLog(signer);
  text = formatBundle(await log.export({ inclusion: [0, 7, 19], consistency: true }));
  lines = text.trimEnd().split('\n');
});

const join = (ls: string[]) => `${ls.join('\n')}\n`;
const entryLine = (i: number) =>
  lines.findIndex((l) => l.includes(`"type":"entry"`) && l.includes(`"index":${i},`));
const cpLine = (size: number) =>
  lines.findIndex((l) => l.includes(`"type":"checkpoint"`) && l.includes(`\\n${size}\\n`));
const codes = (r: { errors: TranslogError[] }) => [...new Set(r.errors.map((e) => e.code))].sort();

describe('verifyBundle', () => {
  it('accepts an untouched export, with every check counted', async () => {
    const r = await verifyBundle(text, vkey);
    expect(r.errors).toEqual([]);
    expect(r).toMatchObject({
      ok: true,
      origin: ORIGIN,
      entries: { from: 0, to: 20 },
      inclusionProofs: 3,
      consistencyProofs: 2,
    });
    expect(r.checkpoints.map((c) => [c.size, c.status])).toEqual([
      [5, 'verified'],
      [12, 'verified'],
      [20, 'verified'],
    ]);
    expect(formatBundle(parseBundle(text))).toBe(text);
  });

  it('accepts a partial export (from entry 7), its roots recomputed from the range line', async () => {
    const part = formatBundle(await log.export({ from: 7, consistency: true, inclusion: [8] }));
    expect(part.split('\n')[1]).toMatch(/^\{"type":"range","size":7,/);
    const r = await verifyBundle(part, vkey);
    expect(r.errors).toEqual([]);
    expect(r.checkpoints.map((c) => c.size)).toEqual([12, 20]);
  });

  it('a reordered entry: index-gap and chain-broken at that entry, root-mismatch at later checkpoints', async () => {
    const ls = lines.slice();
    const [a, b] = [entryLine(8), entryLine(9)];
    [ls[a], ls[b]] = [ls[b]!, ls[a]!];
    const r = await verifyBundle(join(ls), vkey);
    expect(r.ok).toBe(false);
    expect(r.errors[0]).toMatchObject({ code: 'index-gap', where: { entry: 8 } });
    expect(r.errors.find((e) => e.code === 'chain-broken')?.where.entry).toBe(8);
    expect(r.errors.filter((e) => e.code === 'root-mismatch').map((e) => e.where.checkpoint)).toEqual([
      12, 20,
    ]);
    expect(r.checkpoints.find((c) => c.size === 5)?.status).toBe('verified');
  });

  it('a deleted entry: the header no longer matches; with the header fixed, index-gap and chain-broken', async () => {
    const ls = lines.filter((_, i) => i !== entryLine(9));
    await expect(verifyBundle(join(ls), vkey)).rejects.toMatchObject({ code: 'bad-bundle' });
    ls[0] = ls[0]!.replace('"to":20', '"to":19');
    const r = await verifyBundle(join(ls), vkey);
    expect(r.errors[0]).toMatchObject({ code: 'index-gap', where: { entry: 9 } });
    expect(r.errors[0]!.message).toMatch(/entries 9…9 are missing/);
    expect(codes(r)).toEqual([
      'bad-proof', // the inclusion proof of entry 19, now missing
      'chain-broken',
      'checkpoint-beyond-entries',
      'inconsistent-checkpoints',
      'index-gap',
      'root-mismatch',
    ]);
  });

  it("an edited entry's details: the next entry's chain breaks and later roots differ", async () => {
    const ls = lines.slice();
    ls[entryLine(4)] = ls[entryLine(4)]!.replace('policy: debug TEE', 'policy: ok');
    expect(ls[entryLine(4)]).toContain('policy: ok');
    const r = await verifyBundle(join(ls), vkey);
    expect(r.errors[0]).toMatchObject({ code: 'chain-broken', where: { entry: 5 } });
    expect(r.errors.filter((e) => e.code === 'root-mismatch').map((e) => e.where.checkpoint)).toEqual([
      5, 12, 20,
    ]);
  });

  it('editing the last entry is caught by the root alone', async () => {
    const ls = lines.slice();
    ls[entryLine(19)] = ls[entryLine(19)]!.replace('tee:a:19', 'tee:a:91');
    const r = await verifyBundle(join(ls), vkey);
    expect(r.errors.map((e) => [e.code, e.where.checkpoint ?? e.where.entry])).toContainEqual([
      'root-mismatch',
      20,
    ]);
    expect(r.errors.map((e) => [e.code, e.where.entry])).toContainEqual(['bad-inclusion-proof', 19]);
  });

  it('a forked log: a checkpoint of a fork is inconsistent with the earlier one and with the entries', async () => {
    const fork = await buildLog(signer, 15);
    const forked = (await fork.store.getCheckpoint(20))!;
    const ls = lines.slice();
    ls[cpLine(20)] = JSON.stringify({ type: 'checkpoint', note: forked });
    const r = await verifyBundle(join(ls), vkey);
    expect(r.errors.find((e) => e.code === 'root-mismatch')?.where.checkpoint).toBe(20);
    expect(
      r.errors.filter((e) => e.code === 'inconsistent-checkpoints').map((e) => e.where.checkpoint),
    ).toEqual([20, 20]);
    // Both checkpoints of size 20 in one bundle: the log signed two histories.
    const both = join([...lines, JSON.stringify({ type: 'checkpoint', note: forked })]);
    const r2 = await verifyBundle(both, vkey);
    expect(r2.errors[0]).toMatchObject({ code: 'inconsistent-checkpoints', where: { checkpoint: 20 } });
    expect(r2.errors[0]!.message).toMatch(/forked/);
  });

  it('a bad signature: that checkpoint is refused; entries after the last good one are unsigned', async () => {
    const ls = lines.slice();
    const cp = JSON.parse(ls[cpLine(20)]!) as { note: string };
    const sig = cp.note.trimEnd().split(' ').pop()!;
    const i = 20;
    const tampered = sig.slice(0, i) + (sig[i] === 'A' ? 'B' : 'A') + sig.slice(i + 1);
    ls[cpLine(20)] = JSON.stringify({ type: 'checkpoint', note: cp.note.replace(sig, tampered) });
    const r = await verifyBundle(join(ls), vkey);
    expect(r.errors[0]).toMatchObject({ code: 'bad-signature', where: { checkpoint: 20 } });
    expect(codes(r)).toEqual(['bad-signature', 'proof-without-checkpoint', 'unsigned-entries']);
  });

  it('a checkpoint whose size exceeds the entries is refused', async () => {
    const short = await log.export({ to: 12 });
    short.checkpoints.push((await log.store.getCheckpoint(20))!);
    const r = await verifyBundle(formatBundle(short), vkey);
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toMatchObject({ code: 'checkpoint-beyond-entries', where: { checkpoint: 20 } });
  });

  it('a wrong key, another origin, or no checkpoint at all is refused', async () => {
    const other = await generateNoteSigner(ORIGIN);
    const r = await verifyBundle(text, other.vkey);
    expect(codes(r)).toEqual(['no-checkpoint', 'proof-without-checkpoint', 'unknown-key']);
    const elsewhere = await generateNoteSigner('elsewhere.example/log');
    expect(codes(await verifyBundle(text, elsewhere.vkey))).toContain('bad-checkpoint');
    const bare = join(
      lines.filter(
        (l) =>
          !l.includes('"type":"checkpoint"') &&
          !l.includes('"type":"inclusion"') &&
          !l.includes('"type":"consistency"'),
      ),
    );
    expect(codes(await verifyBundle(bare, vkey))).toEqual(['no-checkpoint']);
  });

  it('tampered proofs in the bundle are refused', async () => {
    const ls = lines.map((l) => {
      if (!l.includes('"type":"inclusion"') && !l.includes('"type":"consistency"')) return l;
      const o = JSON.parse(l) as { proof: string[] };
      o.proof[0] = o.proof[0]!.replace(/^./, (c) => (c === '0' ? '1' : '0'));
      return JSON.stringify(o);
    });
    const r = await verifyBundle(join(ls), vkey);
    expect(r.errors.filter((e) => e.code === 'bad-inclusion-proof').map((e) => e.where.entry)).toEqual([
      0, 7, 19,
    ]);
    expect(r.errors.filter((e) => e.code === 'inconsistent-checkpoints')).toHaveLength(2);
  });

  it('a checkpoint before a partial export counts only when a consistency proof ties it in', async () => {
    const part = await log.export({ from: 7 });
    part.checkpoints.unshift((await log.store.getCheckpoint(5))!);
    expect((await verifyBundle(part, vkey)).errors.map((e) => [e.code, e.where.checkpoint])).toEqual([
      ['checkpoint-not-covered', 5],
    ]);
    part.consistency.push({ size1: 5, size2: 12, proof: await log.consistencyProof(5, 12) });
    expect((await verifyBundle(part, vkey)).errors).toEqual([]);
  });

  it('refuses malformed bundles with the line at fault', async () => {
    const bad = async (t: string, re: RegExp) => {
      const e = await verifyBundle(t, vkey).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(TranslogError);
      expect((e as TranslogError).message).toMatch(re);
    };
    await bad('', /empty/);
    await bad(join([lines[1]!, lines[0]!]), /line 1: the first line is the header/);
    await bad(join([lines[0]!, '{nope']), /line 2: not JSON/);
    await bad(join([lines[0]!.replace('bundle/v1', 'bundle/v9')]), /format/);
    await bad(join([...lines, '{"type":"mystery"}']), /unknown line type/);
    const extra = lines.slice();
    extra[entryLine(2)] = extra[entryLine(2)]!.replace('"kind"', '"sneaky":1,"kind"');
    await bad(join(extra), /unknown field\(s\) sneaky/);
    await bad(
      join([...lines, '{"type":"inclusion","index":1,"size":5,"proof":["xyz"]}']),
      /64 lower-case hex/,
    );
  });

  it('never accepts a mutated bundle and never fails with anything but a TranslogError (fuzz)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.nat(), fc.integer({ min: 1, max: 255 }), async (lineSeed, pos, x) => {
        const ls = lines.slice();
        const k = 1 + (lineSeed % (ls.length - 1));
        const l = ls[k]!;
        const at = pos % l.length;
        ls[k] = l.slice(0, at) + String.fromCharCode(l.charCodeAt(at) ^ x) + l.slice(at + 1);
        if (ls[k] === l) return;
        try {
          const r = await verifyBundle(join(ls), vkey);
          // A change JSON does not see (e.g. escaping an ASCII letter in a string) is no change.
          if (r.ok) expect(formatBundle(parseBundle(join(ls)))).toBe(text);
        } catch (e) {
          expect(e).toBeInstanceOf(TranslogError);
        }
      }),
      { numRuns: 150 },
    );
  });
});

describe('verifyEntryProof (a single receipt)', () => {
  it('accepts an entry with its proof and checkpoint; refuses it once the entry changes', async () => {
    const { entry, proof, checkpoint } = await log.entryWithProof(6);
    expect((await verifyEntryProof(entry, proof, checkpoint, vkey)).size).toBe(20);
    await expect(
      verifyEntryProof({ ...entry, actor: 'someone else' }, proof, checkpoint, vkey),
    ).rejects.toMatchObject({
      code: 'bad-inclusion-proof',
    });
  });
});

describe('streamed bundles (verified line by line)', () => {
  let streamed: string[];
  beforeAll(async () => {
    let t = '';
    for await (const c of log.exportLines({ inclusion: 'all', consistency: true })) t += c;
    streamed = t.trimEnd().split('\n');
  });
  const bytes = (ls: string[]) => new TextEncoder().encode(join(ls));

  it('reads a bundle from bytes cut anywhere, multi-byte characters included', async () => {
    const ls = streamed.slice();
    const at = ls.findIndex((l) => l.includes('"type":"entry"'));
    // A note in another script makes multi-byte UTF-8 that the cuts split.
    ls.splice(1, 0, JSON.stringify({ type: 'checkpoint', note: 'é😀' }));
    const all = bytes(ls);
    async function* cut(step: number) {
      for (let i = 0; i < all.length; i += step) yield all.subarray(i, i + step);
    }
    for (const step of [1, 7, 4096]) {
      const got: string[] = [];
      for await (const l of readBundleLines(cut(step))) got.push(l);
      expect(got).toEqual(ls);
    }
    const r = await verifyBundleLines(readBundleLines(cut(4096)), vkey);
    expect(r.errors.map((e) => e.code)).toEqual(['bad-note']);
    expect(ls[at + 1]).toContain('"index":0,');
    // Without a final newline the last line is still read.
    const last = [];
    for await (const l of readBundleLines(
      (async function* () {
        yield new TextEncoder().encode('a\nb');
      })(),
    ))
      last.push(l);
    expect(last).toEqual(['a', 'b']);
  });

  it('accepts the streamed export and finds the same faults as in the other layout', async () => {
    const ok = await verifyBundleLines(streamed, vkey);
    expect(ok.errors).toEqual([]);
    expect(ok).toMatchObject({ ok: true, inclusionProofs: 20, consistencyProofs: 2 });
    const at = streamed.findIndex((l) => l.includes('"type":"entry"') && l.includes('"index":4,'));
    const ls = streamed.slice();
    ls[at] = ls[at]!.replace('policy: debug TEE', 'policy: ok');
    const r = await verifyBundleLines(ls, vkey);
    expect(r.errors[0]).toMatchObject({ code: 'chain-broken', where: { entry: 5 } });
    expect(r.errors.filter((e) => e.code === 'root-mismatch').map((e) => e.where.checkpoint)).toEqual([
      5, 12, 20,
    ]);
    expect(r.errors.filter((e) => e.code === 'bad-inclusion-proof').map((e) => e.where.entry)).toEqual([4]);
    expect(r.errors.filter((e) => e.code === 'inconsistent-checkpoints')).toHaveLength(2);
  });

  it('refuses a streamed bundle whose lines are out of the promised order', async () => {
    const refused = async (ls: string[], re: RegExp) => {
      const e = await verifyBundleLines(ls, vkey).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(TranslogError);
      expect((e as TranslogError).code).toBe('bad-bundle');
      expect((e as TranslogError).message).toMatch(re);
    };
    const cp = streamed.findIndex((l) => l.includes('"type":"checkpoint"'));
    await refused([...streamed, streamed[cp]!], /checkpoint lines come before the entries/);
    const proof = streamed.findIndex((l) => l.includes('"type":"inclusion"') && l.includes('"index":3,'));
    const moved = streamed.slice();
    const [p] = moved.splice(proof, 1);
    moved.push(p!);
    await refused(moved, /inclusion proof of entry 3 directly follows that entry/);
    await refused([streamed[0]!.replace('"layout":"streamed"', '"layout":"sideways"')], /layout "sideways"/);
  });

  it('refuses a line longer than the limit instead of buffering it', async () => {
    async function* endless() {
      for (let i = 0; i < 100; i++) yield new Uint8Array(1024).fill(0x61);
    }
    const read = async () => {
      for await (const _ of readBundleLines(endless(), 10_000)) {
        // nothing: the first line never ends
      }
    };
    await expect(read()).rejects.toMatchObject({
      code: 'bad-bundle',
      message: /line 1 is longer than 10000 bytes/,
    });
  });
});
