import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatBundle, parseBundle, verifyBundle } from '../../src/translog/bundle.js';
import { TranslogError } from '../../src/translog/errors.js';
import { ProofBuilder, verifyConsistency, verifyInclusion } from '../../src/translog/merkle.js';
import { generateNoteSigner } from '../../src/translog/note.js';
import { MemoryLogStore, TransparencyLog } from '../../src/translog/store.js';
import { leavesOf, referenceRoot } from './helpers.js';

describe('translog (heavy)', () => {
  it('proofs in trees up to 2000 leaves verify against the reference root', async () => {
    const leaves = await leavesOf(2000);
    const b = new ProofBuilder(
      { leafHashes: async (a, z) => leaves.slice(a, z) },
      { batchLevel: 3, cacheMinLevel: 3 },
    );
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2000 }), fc.nat(), fc.nat(), async (n, a, c) => {
        const m = a % n;
        const root = await referenceRoot(leaves.slice(0, n));
        await verifyInclusion(m, n, leaves[m]!, await b.inclusionProof(m, n), root);
        const s1 = 1 + (c % n);
        await verifyConsistency(
          s1,
          n,
          await referenceRoot(leaves.slice(0, s1)),
          root,
          await b.consistencyProof(s1, n),
        );
      }),
      { numRuns: 300 },
    );
  });

  it('no mutation of a bundle is accepted or crashes the verifier', async () => {
    const { signer, vkey } = await generateNoteSigner('fuzz.example/log');
    const store = new MemoryLogStore();
    for (let k = 0; k < 6; k++) {
      await store.append(
        Array.from({ length: 5 }, (_, i) => ({
          kind: 'release',
          tenant: 't',
          actor: `a${k}${i}`,
          subject: 's',
          details: { k, i },
        })),
        { signer },
      );
    }
    const text = formatBundle(
      await new TransparencyLog(store, signer.name).export({ inclusion: 'all', consistency: true }),
    );
    const lines = text.trimEnd().split('\n');
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        fc.boolean(),
        async (ls, pos, x, drop) => {
          const out = lines.slice();
          const k = 1 + (ls % (out.length - 1));
          if (drop) out.splice(k, 1);
          else {
            const l = out[k]!;
            const at = pos % l.length;
            out[k] = l.slice(0, at) + String.fromCharCode(l.charCodeAt(at) ^ x) + l.slice(at + 1);
          }
          const mutated = `${out.join('\n')}\n`;
          try {
            const r = await verifyBundle(mutated, vkey);
            // Dropping a proof or an earlier checkpoint leaves a smaller but true bundle; nothing else may pass.
            if (r.ok && drop) expect(lines[k]).toMatch(/^\{"type":"(inclusion|consistency|checkpoint)"/);
            if (r.ok && drop && lines[k]!.includes('"type":"checkpoint"'))
              expect(lines[k]).not.toContain('\\n30\\n');
            if (r.ok && !drop) expect(formatBundle(parseBundle(mutated))).toBe(text);
          } catch (e) {
            expect(e).toBeInstanceOf(TranslogError);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});
