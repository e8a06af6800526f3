import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import {
  checkListen,
  clientFetch,
  createHttp,
  HttpSetupError,
  isLoopback,
  probeListen,
  readCaFile,
  readTlsFiles,
} from '../../src/http/index.js';
import { makeCa, tlsFiles } from './certs.js';

const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

/** An HTTPS server on the shared stack answering GET / with "ok". */
async function httpsServer(files: { certFile: string; keyFile: string }, log: string[] = []) {
  const app = createHttp({
    bodyLimit: 1024,
    tls: { ...files, pollMs: 20, log: (l) => log.push(l) },
  });
  app.get('/', async () => 'ok');
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  closers.push(() => app.close());
  return { app, url, log };
}

/** The SHA-256 fingerprint of the certificate a new TLS connection to `url` is shown. */
function peerFingerprint(url: string, ca: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect({ host: hostname, port: Number(port), ca, servername: 'localhost' }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.end();
    });
    s.once('error', reject);
  });
}

const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;

async function until(check: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

function refusal(f: () => unknown): HttpSetupError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(HttpSetupError);
    return e as HttpSetupError;
  }
  throw new Error('not refused');
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('not refused');
}

describe('HTTPS servers and clients', () => {
  it('serves HTTPS; a client trusting the CA (--cacert) gets through', async () => {
    const f = await tlsFiles();
    const { url } = await httpsServer(f);
    expect(url.startsWith('https://127.0.0.1:')).toBe(true);
    const res = await (await clientFetch(f.caFile))(url);
    expect(await res.text()).toBe('ok');
  });

  it('a client without the CA is refused, with one line naming the server and the fix', async () => {
    const f = await tlsFiles();
    const { url } = await httpsServer(f);
    const e = await rejection((await clientFetch(undefined))(url));
    expect(e).toBeInstanceOf(TypeError);
    expect(e.message).not.toContain('\n');
    expect(e.message).toContain(new URL(url).origin);
    expect(e.message).toContain('TLS certificate not trusted');
    expect(e.message).toContain('--cacert');
  });

  it('a client trusting another CA is refused too, naming its CA file', async () => {
    const f = await tlsFiles();
    const other = await tlsFiles();
    const { url } = await httpsServer(f);
    const e = await rejection((await clientFetch(other.caFile))(`${url}/`));
    expect(e.message).toContain(`the CA in ${other.caFile} did not sign it`);
  });

  it('CLOISTER_CACERT is the default CA file', async () => {
    const f = await tlsFiles();
    const { url } = await httpsServer(f);
    const before = process.env.CLOISTER_CACERT;
    process.env.CLOISTER_CACERT = f.caFile;
    try {
      expect((await (await clientFetch())(url)).status).toBe(200);
    } finally {
      if (before === undefined) delete process.env.CLOISTER_CACERT;
      else process.env.CLOISTER_CACERT = before;
    }
  });

  it('a missing or unreadable CA file is one line naming it', async () => {
    const missing = join((await tlsFiles()).dir, 'nope.pem');
    const e = (await rejection(clientFetch(missing))) as HttpSetupError;
    expect(e.code).toBe('ca-file');
    expect(e.message).toBe(`${missing}: cannot read the CA file (--cacert or CLOISTER_CACERT): ENOENT`);
  });

  it('a CA file without a certificate is refused, naming it', async () => {
    const f = await tlsFiles();
    const e1 = (await rejection(readCaFile(f.keyFile))) as HttpSetupError;
    expect(e1.code).toBe('ca-file');
    expect(e1.message).toContain(`${f.keyFile}: not a PEM CA certificate bundle`);
    const bad = join(f.dir, 'bad.pem');
    writeFileSync(bad, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    const e2 = (await rejection(readCaFile(bad))) as HttpSetupError;
    expect(e2.code).toBe('ca-file');
    expect(e2.message.split('\n')).toHaveLength(1);
  });

  it('certificate and key files that are missing or do not match are refused before listening', async () => {
    const f = await tlsFiles();
    const other = await tlsFiles();
    const missing = join(f.dir, 'missing.pem');
    const e1 = refusal(() => createHttp({ bodyLimit: 1, tls: { certFile: missing, keyFile: f.keyFile } }));
    expect(e1.code).toBe('tls-files');
    expect(e1.message).toBe(`${missing}: cannot read the TLS certificate file (ENOENT)`);
    const e2 = refusal(() => readTlsFiles({ certFile: f.certFile, keyFile: other.keyFile }));
    expect(e2.code).toBe('tls-files');
    expect(e2.message).toContain(
      `${f.certFile}, ${other.keyFile}: not a PEM certificate and its private key`,
    );
    const e3 = refusal(() => readTlsFiles({ certFile: f.keyFile, keyFile: f.keyFile }));
    expect(e3.code).toBe('tls-files');
    // Empty files (a renewal caught half-written): Node would take '' for "none" and fail every handshake.
    const empty = join(f.dir, 'empty.pem');
    writeFileSync(empty, '');
    for (const pair of [
      { certFile: empty, keyFile: f.keyFile },
      { certFile: f.certFile, keyFile: empty },
    ])
      expect(refusal(() => readTlsFiles(pair)).code).toBe('tls-files');
  });
});

describe('certificate reload', () => {
  it('new connections see the new certificate once the files are replaced', async () => {
    const f = await tlsFiles();
    const { url, log } = await httpsServer(f);
    expect(await peerFingerprint(url, f.ca.certPem)).toBe(fingerprint(f.leaf.certPem));
    const next = await f.ca.leaf();
    writeFileSync(f.certFile, next.certPem);
    writeFileSync(f.keyFile, next.keyPem);
    await until(async () => (await peerFingerprint(url, f.ca.certPem)) === fingerprint(next.certPem));
    expect(log).toEqual([`TLS: certificate reloaded from ${f.certFile}`]);
    // And the server still answers a client trusting the CA.
    expect((await (await clientFetch(f.caFile))(url)).status).toBe(200);
  });

  it('a bad new pair keeps the old certificate serving and is reported once', async () => {
    const f = await tlsFiles();
    const { url, log } = await httpsServer(f);
    const other = await makeCa();
    writeFileSync(f.keyFile, (await other.leaf()).keyPem);
    await until(() => log.length > 0);
    await new Promise((r) => setTimeout(r, 200));
    expect(log).toHaveLength(1);
    expect(log[0]).toContain('TLS: kept the certificate in use:');
    expect(log[0]).toContain(f.certFile);
    expect(await peerFingerprint(url, f.ca.certPem)).toBe(fingerprint(f.leaf.certPem));
  });

  it('stops watching the files when the server closes', async () => {
    const f = await tlsFiles();
    const { app, log } = await httpsServer(f);
    await app.close();
    const next = await f.ca.leaf();
    writeFileSync(f.certFile, next.certPem);
    writeFileSync(f.keyFile, next.keyPem);
    await new Promise((r) => setTimeout(r, 200));
    expect(log).toEqual([]);
  });
});

describe('the listen guard', () => {
  it('loopback addresses may serve plain HTTP', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', 'LOCALHOST', '::ffff:127.0.0.1'])
      expect([h, isLoopback(h)]).toEqual([h, true]);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com', '127.0.0.1.example.com', ''])
      expect([h, isLoopback(h)]).toEqual([h, false]);
    expect(() => checkListen({ host: '127.0.0.1', port: 8080, tls: false })).not.toThrow();
  });

  it('refuses plain HTTP on another address with one line naming it and both ways out', () => {
    const e = refusal(() => checkListen({ host: '0.0.0.0', port: 8080, tls: false }));
    expect(e.code).toBe('insecure-listen');
    expect(e.message).toBe(
      'refusing plain HTTP on 0.0.0.0:8080 (not loopback): give --tls-cert FILE --tls-key FILE, or --insecure-http if a TLS-terminating proxy is in front',
    );
    expect(refusal(() => checkListen({ host: '::', port: 1, tls: false })).message).toContain('[::]:1');
  });

  it('allows another address with TLS, or with insecureHttp', () => {
    expect(() => checkListen({ host: '0.0.0.0', port: 8080, tls: true })).not.toThrow();
    expect(() => checkListen({ host: '0.0.0.0', port: 8080, tls: false, insecureHttp: true })).not.toThrow();
  });

  it('probeListen says at once that a port is taken', async () => {
    const taken: Server = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => taken.close(r)));
    const port = (taken.address() as { port: number }).port;
    const e = (await rejection(probeListen('127.0.0.1', port))) as HttpSetupError;
    expect(e.code).toBe('cannot-listen');
    expect(e.message).toBe(
      `cannot listen on 127.0.0.1:${port}: the port is in use; choose another with --port`,
    );
    await probeListen('127.0.0.1', 0);
  });
});

describe('clients and plain HTTP', () => {
  it('send admin credentials over plain HTTP to loopback only, unless told otherwise', async () => {
    const { checkClientUrl } = await import('../../src/http/index.js');
    for (const ok of [
      'https://kbs.example:8080',
      'http://127.0.0.1:8080',
      'http://localhost:8080',
      'http://[::1]:8080',
    ])
      expect(() => checkClientUrl(ok)).not.toThrow();
    for (const bad of [
      'http://kbs.example:8080',
      'http://localhost.evil.example',
      'http://0.0.0.0:8080',
      'http://10.0.0.1',
    ])
      expect(() => checkClientUrl(bad)).toThrow(
        /refusing plain HTTP to .* \(not loopback\).*--insecure-http/,
      );
    expect(() => checkClientUrl('http://kbs.example:8080', true)).not.toThrow();
  });
});
