import { describe, expect, it } from 'vitest';
import { blocksOf, directive, documents, isShell, parseBlocks } from './blocks.js';
import { ROOT } from './run.js';

describe('doc examples are marked up so the doc test can run them', () => {
  it('reads blocks and the directive comments above them', () => {
    const blocks = parseBlocks(
      'x.md',
      [
        'text',
        '<!-- doctest: save client.mjs -->',
        '```js',
        'console.log(1)',
        '```',
        '',
        '<!-- doctest: exit 3 -->',
        '',
        '```sh',
        'cloister verify x',
        '```',
      ].join('\n'),
    );
    expect(blocks.map((b) => [b.line, b.lang, b.body, b.directives])).toEqual([
      [3, 'js', 'console.log(1)', [{ kind: 'save', file: 'client.mjs' }]],
      [9, 'sh', 'cloister verify x', [{ kind: 'exit', status: 3 }]],
    ]);
  });

  it.each([
    ['<!-- doctest: skip -->\n```sh\nx\n```', /needs a reason/],
    ['<!-- doctest: skipp because -->\n```sh\nx\n```', /unknown doctest directive "skipp"/],
    ['<!-- doctest: save ../x -->\n```sh\nx\n```', /relative file name/],
    ['<!-- doctest: exit 3 -->\nprose\n```sh\nx\n```', /not followed by a code block/],
    ['```sh\nx\n', /never closed/],
  ])('refuses a bad directive or block: %s', (text, message) => {
    expect(() => parseBlocks('x.md', text)).toThrow(message);
  });

  it('every document parses, and every example not run says why', () => {
    const skipped: string[] = [];
    for (const doc of documents(ROOT)) {
      for (const b of blocksOf(ROOT, doc)) {
        const skip = directive(b, 'skip');
        if (skip && isShell(b)) skipped.push(`${doc}:${b.line} ${skip.reason}`);
      }
    }
    // The list is short on purpose: each entry is an example a reader cannot run on an ordinary machine
    // (the npm registry, vendor services on the internet, root and systemd in a confidential VM, real
    // TEE hardware or guest images, a production database). A new one must make the case here.
    expect(skipped.length).toBeLessThanOrEqual(13);
  });
});
