/**
 * The browser page's files for `cloister serve --ui` (Node-only), as built by scripts/build-ui.mjs.
 * The page is `/`; everything else is under `/ui/` by file name, as index.html refers to it.
 */
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { UiAsset } from './server.js';

/** dist/infer/ui.js → dist/ui/ */
const BUILT = fileURLToPath(new URL('../ui/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
};

export class UiNotBuiltError extends Error {
  override name = 'UiNotBuiltError';
}

/** Reads the built page from `dir`; fails with a clear error when it was not built there. */
export async function loadUiAssets(dir: string = BUILT): Promise<Map<string, UiAsset>> {
  const hint = 'build it with `node scripts/build-ui.mjs` (part of `npm run build`)';
  let names: string[];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  } catch (e) {
    throw new UiNotBuiltError(
      `the browser page is not built: cannot read ${dir} (${(e as Error).message}); ${hint}`,
    );
  }
  for (const needed of ['index.html', 'page.js', 'page.css']) {
    if (!names.includes(needed))
      throw new UiNotBuiltError(`the browser page is not built: ${dir} has no ${needed}; ${hint}`);
  }
  const assets = new Map<string, UiAsset>();
  for (const name of names.sort()) {
    const type = TYPES[extname(name)];
    // Only the page is served as HTML; other files (a stray editor backup, say) are not served at all.
    if (!type || (type.startsWith('text/html') && name !== 'index.html')) continue;
    const body = new Uint8Array(await readFile(join(dir, name)));
    assets.set(name === 'index.html' ? '/' : `/ui/${name}`, { type, body });
  }
  return assets;
}
