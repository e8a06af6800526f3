/** The broker over HTTPS (tls in its config), and its refusal to serve plain HTTP off loopback. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { clientFetch } from '../../src/http/index.js';
import { AdminClient, AdminClientError } from '../../src/kbs/admin-client.js';
import { loadConfig } from '../../src/kbs/config.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { tlsFiles } from '../http/certs.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const running: TestBroker[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((b) => b.close()));
});

async function broker(...args: Parameters<typeof testBroker>): Promise<TestBroker> {
  const b = await testBroker(...args);
  running.push(b);
  return b;
}

describe('the broker over HTTPS', () => {
  it('serves https://; admin calls and the KBS protocol work for clients trusting the CA', async () => {
    const f = await tlsFiles();
    const b = await broker({ devMode: true, tls: { certFile: f.certFile, keyFile: f.keyFile } });
    expect(b.url.startsWith('https://127.0.0.1:')).toBe(true);
    const trusting = await clientFetch(f.caFile);
    const admin = new AdminClient(b.url, await b.admin(), trusting);
    await admin.call('PUT', '/admin/v1/resources/owner/keys/k1', { bytes: new Uint8Array([1, 2, 3]) });
    await admin.call('PUT', '/admin/v1/policies', { json: { scope: 'default', source: 'true' } });
    const tee = new KbsClient({ url: b.url, attester: await sampleAttester(), fetch: trusting, retries: 1 });
    expect([...(await tee.getResource('owner/keys/k1'))]).toEqual([1, 2, 3]);
  });

  it('a client without the CA is refused, in one line naming the broker and --cacert', async () => {
    const f = await tlsFiles();
    const b = await broker({ tls: { certFile: f.certFile, keyFile: f.keyFile } });
    const e = await new AdminClient(b.url, await b.admin(), await clientFetch(undefined))
      .call('GET', '/admin/v1/resources')
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(e).toBeInstanceOf(AdminClientError);
    const err = e as AdminClientError;
    expect(err.code).toBe('unreachable');
    expect(err.message).not.toContain('\n');
    expect(err.message).toContain(`cannot reach the key broker at ${b.url}`);
    expect(err.message).toContain('TLS certificate not trusted');
    expect(err.message).toContain('--cacert');
    expect(err.message.split(new URL(b.url).origin)).toHaveLength(2); // the broker named once
  });

  it("the TEE's broker client does not retry a certificate it does not trust", async () => {
    const f = await tlsFiles();
    const b = await broker({ devMode: true, tls: { certFile: f.certFile, keyFile: f.keyFile } });
    const base = await clientFetch(undefined);
    let attempts = 0;
    const counting: typeof fetch = (input, init) => {
      attempts++;
      return base(input, init);
    };
    const tee = new KbsClient({ url: b.url, attester: await sampleAttester(), fetch: counting, retries: 4 });
    await expect(tee.getResource('owner/keys/k1')).rejects.toThrow(/TLS certificate not trusted/);
    expect(attempts).toBe(1);
  });

  it('TLS files that cannot serve are refused at start, naming them', async () => {
    const f = await tlsFiles();
    await expect(
      broker({ tls: { certFile: join(f.dir, 'none.pem'), keyFile: f.keyFile } }),
    ).rejects.toMatchObject({ code: 'tls-files', message: expect.stringContaining('none.pem') });
  });

  it('refuses plain HTTP on a non-loopback address, before opening the store', async () => {
    const dir = (await tlsFiles()).dir;
    await expect(
      broker({ host: '0.0.0.0', db: `sqlite:${join(dir, 'never', 'kbs.db')}` }),
    ).rejects.toMatchObject({
      code: 'insecure-listen',
      message: expect.stringMatching(
        /^refusing plain HTTP on 0\.0\.0\.0:0 \(not loopback\): give --tls-cert/,
      ),
    });
  });

  it('listens in plain HTTP on a non-loopback address with insecureHttp, and says so', async () => {
    const b = await broker({ host: '0.0.0.0', insecureHttp: true });
    expect(b.lines.some((l) => l.includes('WARNING: insecureHttp: plain HTTP on 0.0.0.0'))).toBe(true);
    const port = new URL(b.url).port;
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
  });

  it('listens on a non-loopback address with TLS', async () => {
    const f = await tlsFiles();
    const b = await broker({ host: '0.0.0.0', tls: { certFile: f.certFile, keyFile: f.keyFile } });
    const port = new URL(b.url).port;
    expect((await (await clientFetch(f.caFile))(`https://127.0.0.1:${port}/healthz`)).status).toBe(200);
  });
});

describe('the tls and insecureHttp config keys', () => {
  it('resolve tls files against the config file, and default to plain HTTP on loopback only', async () => {
    const f = await tlsFiles();
    const path = join(f.dir, 'kbs.json');
    writeFileSync(path, JSON.stringify({ tls: { certFile: 'cert.pem', keyFile: 'sub/key.pem' } }));
    const c = await loadConfig(path);
    expect(c.tls).toEqual({ certFile: join(f.dir, 'cert.pem'), keyFile: join(f.dir, 'sub', 'key.pem') });
    expect(c.insecureHttp).toBe(false);
    expect((await loadConfig(undefined)).tls).toBeUndefined();
  });

  it('refuses a tls without both files, and an insecureHttp that is not a boolean', async () => {
    const dir = (await tlsFiles()).dir;
    const path = join(dir, 'kbs.json');
    for (const tls of [{ certFile: 'a.pem' }, 'cert.pem', { certFile: '', keyFile: 'k.pem' }, null]) {
      writeFileSync(path, JSON.stringify({ tls }));
      await expect(loadConfig(path)).rejects.toThrow(
        'config tls must be {"certFile": PEM certificate file, "keyFile": PEM private key file}',
      );
    }
    writeFileSync(path, JSON.stringify({ insecureHttp: 'yes' }));
    await expect(loadConfig(path)).rejects.toThrow('config insecureHttp must be true or false');
  });
});
