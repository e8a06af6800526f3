import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// Test authorities sign evidence with keys anyone can read; production code must never reach them.
// Library code must also run in browsers, so Node built-ins stay in node.ts files.
function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return p === path.join('src', 'attest', 'testing') ? [] : sources(p);
    return /\.(ts|js|mts|cts)$/.test(e.name) ? [p] : [];
  });
}

const IMPORT = /(?:from\s*|import\s*\(\s*|import\s+|require\s*\(\s*)['"]([^'"]+)['"]/g;

function testingImports(file: string, text: string): string[] {
  return [...text.matchAll(IMPORT)]
    .map((m) => m[1]!)
    .filter(
      (spec) =>
        spec.startsWith('.') &&
        path.resolve(path.dirname(file), spec).includes(path.join('src', 'attest', 'testing')),
    );
}

describe('test authorities stay out of production code', () => {
  it('no file in src/ outside src/attest/testing imports from it', () => {
    const offenders = sources('src').flatMap((f) =>
      testingImports(path.resolve(f), readFileSync(f, 'utf8')).map((spec) => `${f} imports ${spec}`),
    );
    expect(offenders).toEqual([]);
  });

  it('library code is browser-safe: node: imports only in node.ts files and the CLI', () => {
    const library = [...sources('src/attest'), ...sources('src/util')].filter(
      (f) => path.basename(f) !== 'node.ts',
    );
    const offenders = library.filter((f) =>
      [...readFileSync(f, 'utf8').matchAll(IMPORT)].some((m) => m[1]!.startsWith('node:')),
    );
    expect(offenders).toEqual([]);
  });

  it('the check itself catches such an import', () => {
    const f = path.resolve('src/attest/tdx/verify.ts');
    expect(testingImports(f, "import { issue } from '../testing/tdx.js';")).toHaveLength(1);
    expect(testingImports(f, "export * from '../testing/index.js';")).toHaveLength(1);
    expect(testingImports(f, "const m = await import('../testing/index.js');")).toHaveLength(1);
    expect(testingImports(f, "import { x } from '../common/types.js';")).toHaveLength(0);
  });
});
