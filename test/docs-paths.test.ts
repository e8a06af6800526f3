/**
 * Every repository path the docs name (`src/…`, `test/…`, `docs/…`, `bench/…`, `scripts/…`, `deploy/…`
 * in README.md and docs/**\/*.md) exists, so a rename or a move that leaves the docs pointing at nothing
 * fails here. Brace lists (`src/attest/{tdx,sgx}`) are expanded. Paths inside other projects' trees
 * (Trustee's `kbs/src/error.rs`) are not ours and are not matched: a name counts only where one of those
 * folders starts it.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/** Directories the design names for work not yet started; each must not exist yet, or leave this list. */
const PLANNED: Record<string, string> = {
  'src/data': 'curation pipelines over sealed datasets (docs/design.md, workloads)',
};

function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return markdownFiles(path);
    return e.name.endsWith('.md') ? [path] : [];
  });
}

/** `a/{b,c}/d` → `a/b/d`, `a/c/d` (nested lists too). */
function expandBraces(pattern: string): string[] {
  const m = /\{([^{}]*)\}/.exec(pattern);
  if (!m) return [pattern];
  const before = pattern.slice(0, m.index);
  const after = pattern.slice(m.index + m[0].length);
  return m[1]!.split(',').flatMap((alt) => expandBraces(`${before}${alt}${after}`));
}

/** The top-level folders whose paths the docs name. */
const ROOTS = ['src', 'test', 'docs', 'bench', 'scripts', 'deploy'];
// `@` is part of a name (systemd templates: cloister-serve@.service).
const PATH = new RegExp(`(?<![\\w./-])(?:${ROOTS.join('|')})\\/[\\w./{},@-]*`, 'g');

/** The repository paths named in `text`, with the line each is on. */
function sourcePaths(text: string): { path: string; line: number }[] {
  const out: { path: string; line: number }[] = [];
  text.split('\n').forEach((content, i) => {
    for (const m of content.matchAll(PATH)) {
      // A sentence's full stop or comma after the path is not part of it; nor is a bare `src/`.
      const named = m[0].replace(/[.,]+$/, '');
      for (const path of expandBraces(named)) {
        const clean = path.replace(/\/+$/, '');
        if (!ROOTS.includes(clean)) out.push({ path: clean, line: i + 1 });
      }
    }
  });
  return out;
}

const DOCS = ['README.md', ...markdownFiles('docs')];

describe('repository paths named in the docs', () => {
  it('finds paths the way a reader reads them', () => {
    expect(
      sourcePaths(
        'see `src/seal`, src/attest/{tdx,sgx}/verify.ts.\nTrustee: kbs/src/error.rs and src/.\ntest/tee/, deploy/systemd/cloister-serve@.service and test/.',
      ),
    ).toEqual([
      { path: 'src/seal', line: 1 },
      { path: 'src/attest/tdx/verify.ts', line: 1 },
      { path: 'src/attest/sgx/verify.ts', line: 1 },
      { path: 'test/tee', line: 3 },
      { path: 'deploy/systemd/cloister-serve@.service', line: 3 },
    ]);
    expect(expandBraces('a/{b,c}/{d,e}')).toEqual(['a/b/d', 'a/b/e', 'a/c/d', 'a/c/e']);
  });

  it.each(DOCS)('%s names only paths that exist (or are listed as planned)', (doc) => {
    const missing = sourcePaths(readFileSync(doc, 'utf8'))
      .filter(({ path }) => !existsSync(path) && !(path in PLANNED))
      .map(({ path, line }) => `${doc}:${line} ${path}`);
    expect(missing).toEqual([]);
  });

  it('planned directories are still only planned', () => {
    for (const path of Object.keys(PLANNED)) expect(existsSync(path), path).toBe(false);
  });
});
