/**
 * The web-standard entry points (the sealed format, attestation, policy, OHTTP, the transparency log
 * and the client SDK) in a browser: each built file in dist/, as `exports` names it, is bundled by
 * esbuild for the browser platform, which refuses any `node:` import, so a Node-only module reaching
 * one fails here. The bundles then load in Debian's Chromium (through playwright-core, as in
 * test/ui/browser.test.ts; skipped without it unless CLOISTER_REQUIRE_BROWSER=1), must export what
 * Node sees, and seal and open a buffer there with WebCrypto.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { build } from 'esbuild';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  name: string;
  exports: Record<string, string>;
};

/** Meant to run in browsers as well as Node. */
const WEB = ['./seal', './attest', './policy', './ohttp', './translog', './client'];
/** Node-only by design: file collateral, test forgeries, the inference server's helpers. */
const NODE_ONLY = ['./attest/node', './attest/testing', './infer'];

const CHROMIUM = process.env.CLOISTER_CHROMIUM ?? '/usr/bin/chromium';
const required = process.env.CLOISTER_REQUIRE_BROWSER === '1';
const noBrowser = !existsSync(CHROMIUM) && !required;
if (noBrowser) {
  console.warn(
    `browser import tests skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CLOISTER_CHROMIUM; CLOISTER_REQUIRE_BROWSER=1 makes this a failure)`,
  );
}

/** One export bundled for browsers: the module's code and the names it exports. */
async function bundle(sub: string): Promise<{ code: string; exports: string[] }> {
  const r = await build({
    entryPoints: [pkg.exports[sub]!],
    outfile: 'bundle.js',
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: ['es2022'],
    write: false,
    metafile: true,
    logLevel: 'silent',
  });
  return {
    code: r.outputFiles[0]!.text,
    exports: Object.values(r.metafile.outputs).flatMap((o) => o.exports),
  };
}

describe('web-standard entry points in a browser', () => {
  const bundles = new Map<string, { code: string; exports: string[] }>();

  it('every entry point is classified as web-standard or Node-only', () => {
    expect(Object.keys(pkg.exports).sort()).toEqual([...WEB, ...NODE_ONLY].sort());
  });

  it.each(WEB)('%s bundles for the browser platform and exports what Node sees', async (sub) => {
    const b = await bundle(sub);
    bundles.set(sub, b);
    const inNode: Record<string, unknown> = await import(`${pkg.name}${sub.slice(1)}`);
    expect(b.exports.sort()).toEqual(Object.keys(inNode).sort());
  });

  it('a Node-only module does not bundle for the browser (the check above can fail)', async () => {
    await expect(bundle('./attest/node')).rejects.toThrow(/node:/);
  });

  describe.skipIf(noBrowser)('in Chromium', () => {
    let server: Server;
    let origin: string;
    let browser: Browser;

    beforeAll(async () => {
      if (!existsSync(CHROMIUM))
        throw new Error(`CLOISTER_REQUIRE_BROWSER=1 but there is no Chromium at ${CHROMIUM}`);
      for (const sub of WEB) if (!bundles.has(sub)) bundles.set(sub, await bundle(sub));
      // Modules load over http from one origin (import() of a blob or data URL is not a page's normal path).
      server = createServer((req, res) => {
        const sub = `.${req.url?.replace(/\.js$/, '')}`;
        const b = bundles.get(sub);
        if (req.url === '/') {
          res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>cloister</title>');
        } else if (b) {
          res.writeHead(200, { 'content-type': 'text/javascript' }).end(b.code);
        } else {
          res.writeHead(404).end();
        }
      });
      await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
      origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--no-first-run',
          '--disable-background-networking',
        ],
      });
    });

    afterAll(async () => {
      await browser?.close();
      await new Promise((ok) => server?.close(ok));
    });

    it('each web-standard bundle imports and exports its names', async () => {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(`${origin}/`);
      for (const sub of WEB) {
        // Code for the page is a string: vitest rewrites `import()` in functions of this file.
        const names = await page.evaluate(
          `import(${JSON.stringify(`${origin}/${sub.slice(2)}.js`)}).then((m) => Object.keys(m).sort())`,
        );
        expect(names, sub).toEqual([...bundles.get(sub)!.exports].sort());
      }
      expect(errors).toEqual([]);
      await page.close();
    });

    it('cloister/seal seals and opens a buffer in the browser, and refuses a tampered one', async () => {
      const page = await browser.newPage();
      await page.goto(`${origin}/`);
      const result = await page.evaluate(`(async () => {
        const seal = await import('${origin}/seal.js');
        const key = await seal.generateHpkeKeyPair();
        const plaintext = new TextEncoder().encode('sealed in a browser');
        const sealed = await seal.sealBytes(plaintext, {
          recipients: [{ type: 'hpke', publicKey: key.publicKey }],
          chunkSize: 16,
        });
        const opened = new TextDecoder().decode(await seal.openBytes(sealed, key));
        const tampered = sealed.slice();
        tampered[tampered.length - 1] ^= 1;
        const refused = await seal.openBytes(tampered, key).then(() => 'opened', (e) => e.code);
        return { opened, refused };
      })()`);
      expect(result).toEqual({ opened: 'sealed in a browser', refused: 'chunk-tampered' });
      await page.close();
    });
  });
});
