import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadUiAssets, UiNotBuiltError } from '../../src/infer/ui.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cloister-ui-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function files(sub: string, entries: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(dir, sub));
  for (const [name, text] of Object.entries(entries)) await writeFile(join(d, name), text);
  return d;
}

describe('loadUiAssets', () => {
  it('serves index.html as the page and the other built files under /ui/, by type', async () => {
    const d = await files('built-', {
      'index.html': '<!doctype html>',
      'page.js': 'export {}',
      'page.js.map': '{}',
      'page.css': 'body{}',
      'icon.svg': '<svg/>',
      'notes.html': 'not the page',
      README: 'no type',
    });
    const assets = await loadUiAssets(d);
    expect([...assets.keys()].sort()).toEqual([
      '/',
      '/ui/icon.svg',
      '/ui/page.css',
      '/ui/page.js',
      '/ui/page.js.map',
    ]);
    expect(assets.get('/')!.type).toBe('text/html; charset=utf-8');
    expect(new TextDecoder().decode(assets.get('/')!.body)).toBe('<!doctype html>');
    expect(assets.get('/ui/page.js')!.type).toBe('text/javascript; charset=utf-8');
    expect(assets.get('/ui/page.css')!.type).toBe('text/css; charset=utf-8');
    expect(assets.get('/ui/icon.svg')!.type).toBe('image/svg+xml');
    expect(assets.get('/ui/page.js.map')!.type).toBe('application/json; charset=utf-8');
  });

  it('says the page is not built when the folder is missing', async () => {
    const missing = join(dir, 'nothing-here');
    await expect(loadUiAssets(missing)).rejects.toThrow(UiNotBuiltError);
    await expect(loadUiAssets(missing)).rejects.toThrow(
      /not built: cannot read .*nothing-here.*build-ui\.mjs/,
    );
  });

  it('says which built file is missing (the TypeScript sources are not a build)', async () => {
    const d = await files('sources-', { 'index.html': '', 'page.ts': '', 'page.css': '' });
    await expect(loadUiAssets(d)).rejects.toThrow(/not built: .* has no page\.js/);
  });
});
