/**
 * The `cloister serve --ui` page in a real browser (Debian's Chromium through playwright-core) against
 * a harness server with scripted engines: it verifies the server, refuses one its policy does not
 * accept, and chats end to end encrypted.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createIntelTestAuthority } from '../../src/attest/testing/index.js';
import { loadUiAssets } from '../../src/infer/ui.js';
import { ScriptedTextEngine } from '../infer/fake-engines.js';
import { type Harness, startHarness, TEXT_DIGEST } from '../infer/harness.js';

const ADAPTER_DIGEST = `sha256:${'e5'.repeat(32)}`;

/** Debian's Chromium; CLOISTER_CHROMIUM names another build (playwright-core downloads none). */
const CHROMIUM = process.env.CLOISTER_CHROMIUM ?? '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const required = process.env.CLOISTER_REQUIRE_BROWSER === '1';
const skip = !existsSync(CHROMIUM) && !required;
const root = fileURLToPath(new URL('../..', import.meta.url));

if (skip) {
  console.warn(
    `browser tests skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CLOISTER_CHROMIUM; CLOISTER_REQUIRE_BROWSER=1 makes this a failure)`,
  );
}

describe.skipIf(skip)('the browser page', () => {
  let out: string;
  let h: Harness;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  /** What crossed the wire from the page: method, path and body of every request. */
  let sent: { method: string; path: string; body: string }[];
  /** Console errors and uncaught exceptions: a CSP violation or a page bug shows up here. */
  let problems: string[];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM))
      throw new Error(`CLOISTER_REQUIRE_BROWSER=1 but there is no Chromium at ${CHROMIUM}`);
    // Built from the current sources every run, into a folder of its own, so a stale dist/ui never passes.
    out = await mkdtemp(join(tmpdir(), 'cloister-ui-build-'));
    await promisify(execFile)(process.execPath, [join(root, 'scripts/build-ui.mjs'), out]);
    // Tokens 30 ms apart, so the page can be seen showing a reply while it streams.
    h = await startHarness({
      ui: await loadUiAssets(out),
      text: new ScriptedTextEngine(2, 30),
      textAdapters: [{ digest: ADAPTER_DIGEST, scale: 0.8 }],
    });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  });

  afterAll(async () => {
    await browser?.close();
    await h?.server.close();
    if (out) await rm(out, { recursive: true, force: true });
  });

  beforeEach(async () => {
    context = await browser.newContext();
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    sent = [];
    problems = [];
    page.on('request', (r) => {
      const body = r.postDataBuffer();
      sent.push({
        method: r.method(),
        path: new URL(r.url()).pathname,
        body: body ? body.toString('latin1') : '',
      });
    });
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(e.message));
  });

  afterEach(async () => {
    await context.close();
  });

  it('verifies the sample TEE with ?dev=1, then chats with streamed replies through OHTTP', async () => {
    await page.goto(`${h.server.url}/?dev=1`);
    await page.waitForSelector('#status[data-state="verified"]');
    expect(await page.isChecked('#sample')).toBe(true);
    const verification = await page.textContent('#verification');
    expect(verification).toContain('sample');
    expect(verification).toContain('software only');
    expect(verification).toContain(TEXT_DIGEST);
    // The model's LoRA adapter beside it: short digest, the whole one on hover, its scale.
    expect(verification).toContain(`+ LoRA adapter sha256:${'e5'.repeat(6)}… at scale 0.8`);
    expect(await page.getAttribute('#verification code[title]', 'title')).toBe(ADAPTER_DIGEST);
    expect(verification).toContain(`sha256:${'cd'.repeat(32)}`);
    expect(verification).toMatch(/key id \d+/);
    expect(verification).toContain('end-to-end encrypted');
    expect(await page.textContent('#warnings')).toContain('the sample TEE is software only');
    expect(await page.inputValue('#model')).toBe('tiny-llama');

    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { seen: string[] }).seen = seen;
      new MutationObserver(() => {
        const text = document.querySelector('#messages li[data-role="assistant"]')?.textContent;
        if (text && seen.at(-1) !== text) seen.push(text);
      }).observe(document.getElementById('messages')!, {
        subtree: true,
        childList: true,
        characterData: true,
      });
    });
    await page.fill('#prompt', 'hello secret-word-browser');
    await page.click('#send');
    const reply = page.locator('#messages li[data-role="assistant"]:not([aria-busy])');
    await reply.waitFor();
    expect(await reply.textContent()).toBe(' hello secret-word-browser done');
    // Streamed: the reply grew word by word on the page, not all at once at the end.
    expect(await page.evaluate(() => (window as unknown as { seen: string[] }).seen)).toEqual([
      ' hello',
      ' hello secret-word-browser',
      ' hello secret-word-browser done',
    ]);
    expect(h.text.prompts.at(-1)).toBe('hello secret-word-browser');
    expect(await page.isEnabled('#send')).toBe(true);

    // The prompt left the page only encapsulated: the browser itself never sent an API request.
    expect(sent.some((r) => r.method === 'POST' && r.path === '/.well-known/ohttp-gateway')).toBe(true);
    expect(sent.filter((r) => r.path.startsWith('/v1/') && r.path !== '/v1/attestation')).toEqual([]);
    expect(sent.map((r) => r.body).join('')).not.toContain('secret-word');
    expect(problems).toEqual([]);
  });

  it('stops a streaming reply, which stops the generation in the server', async () => {
    await page.goto(`${h.server.url}/?dev=1`);
    await page.waitForSelector('#status[data-state="verified"]');
    const aborted = h.text.aborted;
    await page.fill('#prompt', Array.from({ length: 40 }, (_, i) => `w${i}`).join(' '));
    await page.click('#send');
    // The first words are on the page: the reply is streaming.
    await page.waitForSelector('#messages li[data-role="assistant"][aria-busy]:has-text("w1")');
    await page.click('#stop');
    const reply = page.locator('#messages li[data-role="assistant"]:not([aria-busy])');
    await reply.waitFor();
    expect(await reply.textContent()).toMatch(/^ w0 w1.* \[stopped\]$/);
    expect(await reply.textContent()).not.toContain('done');
    await expect.poll(() => h.text.aborted, { timeout: 5000 }).toBe(aborted + 1);
    expect(await page.isEnabled('#send')).toBe(true);
    expect(await page.isDisabled('#stop')).toBe(true);
    expect(problems).toEqual([]);
  });

  it('refuses the sample TEE under the default policy, naming it, and never sends a request', async () => {
    await page.goto(`${h.server.url}/`);
    await page.waitForSelector('#status[data-state="refused"]');
    const status = await page.textContent('#status');
    expect(status).toContain('tee-not-allowed');
    expect(status).toContain("'sample'");
    expect(await page.isChecked('#sample')).toBe(false);
    expect(await page.isDisabled('#send')).toBe(true);
    expect(await page.isDisabled('#prompt')).toBe(true);
    expect(await page.textContent('#verification')).toBe('');
    expect(sent.filter((r) => r.path === '/.well-known/ohttp-gateway')).toEqual([]);

    // Ticking the box is the user's own decision to accept it.
    await page.check('#sample');
    await page.waitForSelector('#status[data-state="verified"]');
    expect(await page.isEnabled('#send')).toBe(true);
    expect(problems).toEqual([]);
  });

  it("refuses a TDX server whose quote does not chain to Intel, with the verifier's reason", async () => {
    // A genuine-looking TDX quote from a test authority: the default policy takes TDX, the page's
    // bundled Intel root does not take the test root.
    const intel = await createIntelTestAuthority();
    const tdx = await startHarness({
      ui: await loadUiAssets(out),
      tee: {
        cpu: {
          source: 'test authority',
          insecure: false,
          collect: async (reportData) => ({
            kind: 'tdx',
            evidence: await intel.issueTdxQuote({ reportData }),
          }),
        },
      },
    });
    try {
      await page.goto(`${tdx.server.url}/`);
      await page.waitForSelector('#status[data-state="refused"]');
      const status = await page.textContent('#status');
      expect(status).toContain('(evidence)');
      expect(status).toContain('not a trusted root');
      expect(await page.isDisabled('#send')).toBe(true);
      expect(sent.filter((r) => r.path === '/.well-known/ohttp-gateway')).toEqual([]);
      expect(problems).toEqual([]);
    } finally {
      await tdx.server.close();
    }
  });
});
