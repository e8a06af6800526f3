/**
 * The AttestationError codes are a closed list, and docs/attestation.md lists exactly those codes; the
 * kinds' pages name no code outside it in their error-code tables.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ATTESTATION_ERROR_CODES,
  AttestationError,
  type AttestationErrorCode,
} from '../../src/attest/common/types.js';

const DOCS = join(import.meta.dirname, '../../docs');

/** The rows of the first Markdown table after the heading `heading`, as trimmed cells. */
function tableAfter(markdown: string, heading: RegExp): string[][] {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => heading.test(l));
  expect(start, `heading ${heading}`).toBeGreaterThanOrEqual(0);
  const rows: string[][] = [];
  let inTable = false;
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith('#')) break;
    if (!line.startsWith('|')) {
      if (inTable) break;
      continue;
    }
    inTable = true;
    rows.push(
      line
        .slice(1, -1)
        .split('|')
        .map((c) => c.trim()),
    );
  }
  // Header and separator rows carry no code.
  return rows.slice(2);
}

const codesIn = (cell: string) => [...cell.matchAll(/`([a-z0-9-]+)`/g)].map((m) => m[1]!);

describe('attestation error codes', () => {
  it('docs/attestation.md lists exactly ATTESTATION_ERROR_CODES, each once', () => {
    const rows = tableAfter(readFileSync(join(DOCS, 'attestation.md'), 'utf8'), /^#+ Error codes$/);
    const documented = rows.map((r) => {
      const codes = codesIn(r[0]!);
      expect(codes, `row ${r.join(' | ')}`).toHaveLength(1);
      expect(r[2], `meaning of ${codes[0]}`).not.toBe('');
      return codes[0]!;
    });
    expect(new Set(documented).size).toBe(documented.length);
    expect([...documented].sort()).toEqual([...ATTESTATION_ERROR_CODES].sort());
  });

  it('the list has no duplicates and is sorted, so a new code has one obvious place', () => {
    expect([...ATTESTATION_ERROR_CODES]).toEqual([...new Set(ATTESTATION_ERROR_CODES)].sort());
  });

  it.each([
    ['attestation/intel.md', /^## \d+\. Error codes$/],
    ['attestation/nvidia.md', /^## Error codes$/],
  ])('%s names only codes of the list in its error-code table', (file, heading) => {
    const known = new Set<string>(ATTESTATION_ERROR_CODES);
    const rows = tableAfter(readFileSync(join(DOCS, file), 'utf8'), heading);
    expect(rows.length).toBeGreaterThan(0);
    const named = rows.flatMap((r) => codesIn(r[1]!));
    expect(named.filter((c) => !known.has(c))).toEqual([]);
  });

  it('an AttestationError carries its code and stage', () => {
    const code: AttestationErrorCode = 'bad-signature';
    const e = new AttestationError('verify', code, 'altered');
    expect([e.name, e.stage, e.code, e.message]).toEqual([
      'AttestationError',
      'verify',
      'bad-signature',
      'altered',
    ]);
    // @ts-expect-error a code outside the closed list does not compile
    void new AttestationError('verify', 'no-such-code', 'x');
  });
});
