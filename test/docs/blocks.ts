/**
 * The command examples of README.md and docs/: every fenced `sh` block, with what the doc test needs to
 * run it as written. A block may be preceded by one HTML comment (invisible on a rendered page) that
 * tells the doc test something a reader already knows from the prose around it:
 *
 * - `<!-- doctest: skip REASON -->`: not run (a reason is required: a registry download, real TEE
 *   hardware). The doc test lists every skip, so there are few and each says why.
 * - `<!-- doctest: exit N -->`: the block is shown failing on purpose and must end with status N.
 * - `<!-- doctest: save FILE -->` before a block of another language (`js`, `python`, `json`, `cel`…):
 *   the prose tells the reader to save it as FILE, and the doc test does, so a later `sh` block can use it.
 * - `<!-- doctest: timeout SECONDS -->`: a block that legitimately takes longer than the default.
 *
 * Everything else in a block runs in bash with `set -eo pipefail`, in order, in one temporary directory
 * per document, with `cloister` on PATH.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export type Directive =
  | { kind: 'skip'; reason: string }
  | { kind: 'exit'; status: number }
  | { kind: 'save'; file: string }
  | { kind: 'timeout'; seconds: number };

export interface Block {
  /** The document, relative to the repository root. */
  doc: string;
  /** 1-based line of the opening fence. */
  line: number;
  /** The fence's info string's first word (`sh`, `js`, `json`…). */
  lang: string;
  body: string;
  directives: Directive[];
}

const SHELL = new Set(['sh', 'bash', 'shell']);

export function isShell(b: Block): boolean {
  return SHELL.has(b.lang);
}

/** Parses one `doctest:` comment; throws on anything it does not know, so a typo cannot skip silently. */
export function parseDirective(text: string, where: string): Directive {
  const m = /^doctest:\s*(\w+)\s*(.*)$/s.exec(text.trim());
  if (!m) throw new Error(`${where}: not a doctest directive: ${text.trim()}`);
  const [, kind, rest] = m as unknown as [string, string, string];
  const arg = rest.trim();
  switch (kind) {
    case 'skip':
      if (arg.length < 10) throw new Error(`${where}: doctest: skip needs a reason a reader understands`);
      return { kind, reason: arg };
    case 'exit':
      if (!/^\d+$/.test(arg)) throw new Error(`${where}: doctest: exit needs a status number`);
      return { kind, status: Number(arg) };
    case 'save':
      if (!/^[\w.-]+(\/[\w.-]+)*$/.test(arg) || arg.split('/').includes('..'))
        throw new Error(`${where}: doctest: save needs a relative file name`);
      return { kind, file: arg };
    case 'timeout':
      if (!/^\d+$/.test(arg)) throw new Error(`${where}: doctest: timeout needs seconds`);
      return { kind, seconds: Number(arg) };
    default:
      throw new Error(`${where}: unknown doctest directive "${kind}"`);
  }
}

/** The fenced blocks of one markdown text, with the directives of the comments just above each. */
export function parseBlocks(doc: string, text: string): Block[] {
  const lines = text.split('\n');
  const blocks: Block[] = [];
  let pending: Directive[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const comment = /^<!--\s*(doctest:.*?)\s*-->\s*$/.exec(line);
    if (comment) {
      pending.push(parseDirective(comment[1]!, `${doc}:${i + 1}`));
      continue;
    }
    const fence = /^(`{3,}|~{3,})\s*([\w-]*)/.exec(line);
    if (fence) {
      const close = fence[1]!;
      const start = i;
      const body: string[] = [];
      for (i++; i < lines.length && !lines[i]!.startsWith(close); i++) body.push(lines[i]!);
      if (i >= lines.length) throw new Error(`${doc}:${start + 1}: code block never closed`);
      blocks.push({ doc, line: start + 1, lang: fence[2] ?? '', body: body.join('\n'), directives: pending });
      pending = [];
      continue;
    }
    // A directive belongs to the block right below it; blank lines may separate them, prose may not.
    if (line.trim() !== '' && pending.length > 0)
      throw new Error(`${doc}:${i + 1}: doctest directive not followed by a code block`);
  }
  if (pending.length > 0) throw new Error(`${doc}: doctest directive at the end, with no code block`);
  return blocks;
}

function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => {
      const path = join(dir, e.name);
      if (e.isDirectory()) return markdownFiles(path);
      return e.name.endsWith('.md') ? [path] : [];
    })
    .sort();
}

/** README.md and every markdown file under docs/, in a stable order. */
export function documents(root: string): string[] {
  return ['README.md', ...markdownFiles(join(root, 'docs')).map((p) => p.slice(root.length + 1))];
}

export function blocksOf(root: string, doc: string): Block[] {
  return parseBlocks(doc, readFileSync(join(root, doc), 'utf8'));
}

export function directive<K extends Directive['kind']>(
  b: Block,
  kind: K,
): Extract<Directive, { kind: K }> | undefined {
  return b.directives.find((d): d is Extract<Directive, { kind: K }> => d.kind === kind);
}
