import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const read = (p: string) => readFileSync(new URL(`../../${p}`, import.meta.url), 'utf8');

/** Every log entry kind the broker's code writes: `this.log(p, '<kind>', …)` and `kind: '<kind>'`. */
function kindsInCode(): string[] {
  const kinds = new Set<string>();
  for (const m of read('src/kbs/admin.ts').matchAll(/this\.log\(\s*p,\s*'([a-z0-9-]+)'/g)) kinds.add(m[1]!);
  for (const file of ['src/kbs/broker.ts', 'src/kbs/train.ts', 'src/cli/kbs.ts']) {
    for (const m of read(file).matchAll(/\bkind: '([a-z0-9-]+)'/g)) kinds.add(m[1]!);
  }
  return [...kinds].sort();
}

/** The kinds listed in the table of docs/transparency-log.md. */
function kindsInDocs(): string[] {
  const doc = read('docs/transparency-log.md');
  const table = doc.slice(doc.indexOf('| kind '), doc.indexOf('Refused attestations'));
  return [...table.matchAll(/^\| `([a-z0-9-]+)`/gm)].map((m) => m[1]!).sort();
}

describe('log entry kinds', () => {
  it('the documentation lists exactly the kinds the broker writes', () => {
    const code = kindsInCode();
    expect(code).toContain('release');
    expect(code).toContain('resource-put');
    expect(code).toContain('train-receipt');
    expect(kindsInDocs()).toEqual(code);
  });
});
