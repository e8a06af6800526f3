/**
 * The software identity (Node-only) of an attested server or trainer: the package version and a digest over its compiled
 * code, so that an attested server also says which Cloister build answers. In a TEE the launch
 * measurement covers the image this code came in; the digest lets a client pin the build without
 * knowing how the image was assembled.
 */
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bs, toHex, utf8 } from '../util/index.js';
import type { SoftwareIdentity } from '../wire/index.js';

const here = fileURLToPath(import.meta.url);
const distRoot = join(dirname(here), '..');
// Under the test runner this module is TypeScript source; the digest then covers the sources.
const codeExtension = here.endsWith('.ts') ? '.ts' : '.js';

async function listJs(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listJs(p)));
    else if (e.name.endsWith(codeExtension) && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** SHA-256 over "path\0sha256(file)\n" for every code file of the build, in path order. */
export async function softwareIdentity(root = distRoot): Promise<SoftwareIdentity> {
  const files = (await listJs(root)).sort();
  const lines: string[] = [];
  for (const f of files) {
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bs(await readFile(f))));
    lines.push(`${relative(root, f)}\0${toHex(d)}\n`);
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bs(utf8.encode(lines.join('')))));
  const pkg = JSON.parse(await readFile(join(root, '..', 'package.json'), 'utf8')) as { version: string };
  return { name: 'cloister', version: pkg.version, digest: `sha256:${toHex(digest)}` };
}
