#!/usr/bin/env node
/**
 * Builds the `cloister serve --ui` browser page: bundles src/ui/page.ts (with the client SDK and the
 * attestation verifiers it uses) for browsers, and copies the page's HTML, CSS and icon next to it.
 *
 *   node scripts/build-ui.mjs [OUTDIR]      default OUTDIR: dist/ui
 *
 * The bundle must run without Node: esbuild's browser platform refuses to bundle any `node:` import,
 * so a Node-only module reaching the page fails this build instead of the page.
 */
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const src = join(root, 'src/ui');
const out = resolve(process.argv[2] ?? join(root, 'dist/ui'));

await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(src, 'page.ts')],
  outfile: join(out, 'page.js'),
  bundle: true,
  platform: 'browser',
  format: 'esm',
  target: ['es2022'],
  minify: true,
  // The map carries the sources, so the page a user was served can be read in the browser's tools.
  sourcemap: true,
  logLevel: 'warning',
});
for (const file of ['index.html', 'page.css', 'icon.svg']) await copyFile(join(src, file), join(out, file));

const { size } = await stat(join(out, 'page.js'));
console.log(`cloister ui: ${out}/page.js ${(size / 1024).toFixed(0)} KiB`);
