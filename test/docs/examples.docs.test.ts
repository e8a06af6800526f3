/**
 * The doc test: every command example in README.md and docs/ runs as written (test/docs/blocks.ts says
 * how examples are marked up, test/docs/run.ts how they run). A document is one terminal session; a
 * failing example fails its document's test with the block, its line and its output.
 */
import { describe, expect, it } from 'vitest';
import { blocksOf, directive, documents, isShell } from './blocks.js';
import { describeFailure, ROOT, runDocument } from './run.js';

const DOCS = documents(ROOT)
  .map((doc) => ({ doc, blocks: blocksOf(ROOT, doc) }))
  .filter(({ blocks }) => blocks.some((b) => isShell(b) && !directive(b, 'skip')));

describe.sequential('command examples run as written', () => {
  for (const { doc, blocks } of DOCS) {
    it(doc, async () => {
      const results = await runDocument(blocks);
      for (const r of results) {
        if (r.status === 'skipped' || r.status === 'saved') continue;
        const want = directive(r.block, 'exit')?.status ?? 0;
        if (r.status !== want) expect.fail(describeFailure(r, want));
      }
      const ran = results.filter((r) => typeof r.status === 'number').length;
      expect(ran).toBeGreaterThan(0);
    });
  }
});
