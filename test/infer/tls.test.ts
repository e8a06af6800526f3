/** The inference server over HTTPS, its listen guard, and `startInference` checking the port first. */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, describe, expect, it } from 'vitest';
import { confidentialFetch } from '../../src/client/fetch.js';
import { clientFetch } from '../../src/http/index.js';
import { startInference } from '../../src/infer/app.js';
import type { InferenceOptions } from '../../src/infer/node.js';
import { generateKek } from '../../src/seal/keys.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import { tlsFiles } from '../http/certs.js';
import { NO_COLLATERAL, SAMPLE_POLICY, startHarness } from './harness.js';

const parent = mkdtempSync(join(tmpdir(), 'cloister-infer-tls-'));
afterAll(() => rmSync(parent, { recursive: true, force: true }));

/** A start that would fail on its (missing) model, if it got that far. */
const options = (o: Partial<InferenceOptions>): InferenceOptions => ({
  models: [join(parent, 'missing.sealed')],
  tee: { cpu: new InsecureSampleAttester() },
  keys: { local: generateKek() },
  privateDir: { parent, allowDisk: true },
  engines: { gpu: false, parallel: 1 },
  maxQueued: 1,
  allowPlaintext: false,
  host: '127.0.0.1',
  port: 0,
  log: () => {},
  ...o,
});

describe('the inference server over HTTPS', () => {
  it('serves https://; the SDK with a fetch trusting the CA verifies it and chats end to end', async () => {
    const f = await tlsFiles();
    const h = await startHarness({ tls: { certFile: f.certFile, keyFile: f.keyFile } });
    try {
      expect(h.server.url.startsWith('https://127.0.0.1:')).toBe(true);
      const fetch = confidentialFetch({
        url: h.server.url,
        policy: SAMPLE_POLICY,
        collateral: NO_COLLATERAL,
        fetch: await clientFetch(f.caFile),
      });
      const openai = new OpenAI({ baseURL: `${h.server.url}/v1`, apiKey: 'unused', fetch, maxRetries: 0 });
      const r = await openai.chat.completions.create({
        model: 'tiny-llama',
        messages: [{ role: 'user', content: 'hi' }],
      });
      expect(typeof r.choices[0]?.message.content).toBe('string');
      // Without the CA, the verification cannot even start: the certificate is refused first.
      const untrusted = confidentialFetch({
        url: h.server.url,
        policy: SAMPLE_POLICY,
        collateral: NO_COLLATERAL,
        fetch: await clientFetch(undefined),
      });
      await expect(untrusted.server()).rejects.toThrow(/TLS certificate not trusted/);
    } finally {
      await h.server.close();
    }
  });

  it('refuses plain HTTP on a non-loopback address unless insecureHttp', async () => {
    await expect(startHarness({ host: '0.0.0.0' })).rejects.toMatchObject({ code: 'insecure-listen' });
    const h = await startHarness({ host: '0.0.0.0', insecureHttp: true });
    await h.server.close();
  });
});

describe('startInference checks where it will listen before loading anything', () => {
  it('refuses plain HTTP off loopback first', async () => {
    await expect(startInference(options({ host: '0.0.0.0', port: 8443 }))).rejects.toMatchObject({
      code: 'insecure-listen',
    });
    expect(readdirSync(parent)).toEqual([]);
  });

  it('refuses a port in use first (not after the model loaded)', async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as { port: number }).port;
    try {
      await expect(startInference(options({ port }))).rejects.toMatchObject({
        code: 'cannot-listen',
        message: `cannot listen on 127.0.0.1:${port}: the port is in use; choose another with --port`,
      });
      expect(readdirSync(parent)).toEqual([]);
    } finally {
      await new Promise((r) => taken.close(r));
    }
  });

  it('refuses TLS files that cannot serve first', async () => {
    const f = await tlsFiles();
    await expect(
      startInference(options({ tls: { certFile: f.certFile, keyFile: join(f.dir, 'gone.pem') } })),
    ).rejects.toMatchObject({ code: 'tls-files', message: expect.stringContaining('gone.pem') });
  });

  it('with the checks passed, goes on to the models', async () => {
    await expect(startInference(options({ host: '0.0.0.0', insecureHttp: true }))).rejects.toThrow(
      /missing\.sealed/,
    );
  });
});
