import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { verifyEar } from '../../src/attest/ear/index.js';
import { parseSampleEvidence } from '../../src/attest/sample/evidence.js';
import { verifySampleEvidence } from '../../src/attest/sample/verify.js';
import { openBytes, sealBytes } from '../../src/seal/container.js';
import { fromBase64, fromHex, utf8 } from '../../src/util/bytes.js';
import { cliTimeouts } from '../cli/run.js';
import { type FakeKbs, startFakeKbs } from './fake-kbs.js';
import { cli, ensureBuilt, putKek, tempDir, waitFor, writeSealed } from './helpers.js';

vi.setConfig(cliTimeouts());

let kbs: FakeKbs;
let work: string;
let socket: string;
let agent: ReturnType<typeof cli>;

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  complete: boolean;
}

function call(path: string, method = 'GET', body?: Uint8Array): Promise<Res> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = request({ socketPath: socket, path, method, agent: false }, (res) => {
      answered = true;
      const parts: Buffer[] = [];
      res.on('data', (d) => parts.push(d));
      const done = (complete: boolean) =>
        resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), complete });
      res.on('end', () => done(res.complete));
      res.on('error', () => done(false));
      res.on('aborted', () => done(false));
    });
    // A cut stream may also fail our upload (EPIPE) once the answer has begun: the response decides.
    req.on('error', (e) => {
      if (!answered) reject(e);
    });
    req.end(body);
  });
}

const problemOf = (r: Res) =>
  JSON.parse(r.body.toString()) as { type: string; status: number; detail: string };

beforeAll(async () => {
  ensureBuilt();
  kbs = await startFakeKbs();
  work = tempDir();
  socket = join(work, 'agent.sock');
  agent = cli([
    'agent',
    'serve',
    '--socket',
    socket,
    '--kbs',
    kbs.url,
    '--tee',
    'sample',
    '--retry-delay-ms',
    '10',
  ]);
  await waitFor(agent.stderr, /listening on/, agent.child);
});

afterAll(async () => {
  agent.child.kill('SIGTERM');
  await agent.done;
  await kbs.close();
  rmSync(work, { recursive: true, force: true });
});

describe('cloister agent serve', () => {
  it('listens on a 0600 socket and reports health', async () => {
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    const r = await call('/healthz');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString())).toEqual({ status: 'ok', tee: 'sample', insecure: true });
  });

  it('GET /token: the EAR the broker issued, binding the session key', async () => {
    const r = await call('/token');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/jwt');
    const ear = await verifyEar(r.body.toString(), kbs.earKey.publicKey);
    expect(ear.submods.cpu0?.kind).toBe('sample');
    expect(ear.extraClaims['cloister.tee-pubkey']).toMatchObject({ kty: 'EC', crv: 'P-256' });
  });

  it('GET /resource: raw bytes; 403 and 404 from the broker become problems', async () => {
    kbs.resources.set('owner/cfg/plain', utf8.encode('value-1'));
    const ok = await call('/resource/owner/cfg/plain');
    expect(ok.status).toBe(200);
    expect(ok.body.toString()).toBe('value-1');
    kbs.deny.add('owner/cfg/denied');
    kbs.resources.set('owner/cfg/denied', utf8.encode('no'));
    const denied = await call('/resource/owner/cfg/denied');
    expect(denied.status).toBe(403);
    expect(denied.headers['content-type']).toBe('application/problem+json');
    expect(problemOf(denied)).toMatchObject({
      type: 'https://cloister.dev/problems/refused-by-broker',
      status: 403,
    });
    expect(problemOf(denied).detail).toContain('policy refuses owner/cfg/denied');
    expect((await call('/resource/owner/cfg/missing')).status).toBe(404);
    const bad = await call('/resource/a/b');
    expect([bad.status, problemOf(bad).type]).toEqual([
      400,
      'https://cloister.dev/problems/bad-resource-path',
    ]);
  });

  it('GET /evidence: evidence over the given report data; bad report data is refused', async () => {
    const r = await call('/evidence?report_data=68656c6c6f');
    expect(r.status).toBe(200);
    expect(r.headers['x-cloister-tee']).toBe('sample');
    const v = await verifySampleEvidence(parseSampleEvidence(new Uint8Array(r.body)), {
      expectedReportData: fromHex('68656c6c6f'),
    });
    expect(v.reportDataChecked).toBe(true);
    const j = await call('/evidence?report_data=00&format=json');
    expect(JSON.parse(j.body.toString()).kind).toBe('sample');
    expect(fromBase64(JSON.parse(j.body.toString()).evidence).length).toBeGreaterThan(0);
    expect((await call(`/evidence?report_data=${'00'.repeat(65)}`)).status).toBe(400);
    expect((await call('/evidence?report_data=xyz')).status).toBe(400);
  });

  it('POST /seal then POST /unseal round-trips through a broker-held KEK', async () => {
    const k = putKek(kbs, 'owner/api/k1');
    const plain = Buffer.alloc(3 << 20, 'x');
    const sealed = await call('/seal?to=kbs:///owner/api/k1&name=big.bin', 'POST', plain);
    expect(sealed.status).toBe(200);
    // Byte comparison: a deep toEqual over megabytes takes seconds.
    expect(Buffer.from(await openBytes(new Uint8Array(sealed.body), k)).equals(plain)).toBe(true);
    const opened = await call('/unseal', 'POST', sealed.body);
    expect([opened.status, opened.complete, opened.headers['x-cloister-name']]).toEqual([
      200,
      true,
      'big.bin',
    ]);
    expect(opened.body.equals(plain)).toBe(true);
  });

  it('POST /unseal refusals: bad header and refused key are problems; a late bad chunk cuts the stream', async () => {
    const k = putKek(kbs, 'owner/api/k2');
    const sealed = await sealBytes(new Uint8Array(10 << 20).fill(7), {
      recipients: [{ type: 'kbs', uri: k.uri!, kek: k.secret }],
    });
    const headerBad = sealed.slice();
    headerBad[40]! ^= 1;
    const h = await call('/unseal', 'POST', headerBad);
    expect(h.status).toBe(400);
    expect(problemOf(h).type).toMatch(/sealed-(header-tampered|bad-header)/);

    const late = sealed.slice();
    late[late.length - 5]! ^= 1;
    const cut = await call('/unseal', 'POST', late);
    expect(cut.status).toBe(200);
    expect(cut.complete).toBe(false);
    expect(cut.body.length).toBeLessThan(10 << 20);

    const k3 = putKek(kbs, 'owner/api/k3');
    kbs.deny.add('owner/api/k3');
    const other = await sealBytes(utf8.encode('s'), {
      recipients: [{ type: 'kbs', uri: k3.uri!, kek: k3.secret }],
    });
    const refused = await call('/unseal', 'POST', other);
    expect([refused.status, problemOf(refused).type]).toEqual([
      403,
      'https://cloister.dev/problems/refused-by-broker',
    ]);
    expect((await call('/unseal', 'POST', new Uint8Array(0))).status).toBe(400);
  });

  it('routing: unknown path 404, wrong method 405, seal without recipient 400', async () => {
    expect((await call('/nope')).status).toBe(404);
    expect((await call('/healthz', 'POST')).status).toBe(405);
    expect((await call('/seal', 'GET')).status).toBe(405);
    // A path that is not valid percent-encoding: the API's own problem, not the framework's JSON.
    const badPath = await call('/resource/owner/cfg/%zz');
    expect(badPath.status).toBe(400);
    expect(problemOf(badPath).type).toMatch(/bad-request$/);
    expect(problemOf(await call('/seal', 'POST', utf8.encode('x'))).type).toMatch(/no-recipient$/);
  });

  it('the Python example in docs/agent-api.md runs against it with the machine python3', async () => {
    const doc = readFileSync(new URL('../../docs/agent-api.md', import.meta.url), 'utf8');
    const code = /```python\n([\s\S]*?)```/.exec(doc)![1]!;
    const script = join(work, 'example.py');
    writeFileSync(script, code);
    const k = putKek(kbs, 'owner/models/kek1');
    kbs.resources.set('owner/models/denied', utf8.encode('x'));
    kbs.deny.add('owner/models/denied');
    const sealed = await writeSealed(work, 'greeting.sealed', 'hello from the owner', k);
    const { stdout } = await promisify(execFile)('python3', [script, socket, sealed]);
    expect(stdout).toBe(
      [
        'health: ok',
        'unsealed: hello from the owner',
        'round trip: HELLO FROM THE OWNER',
        'refused: 403 https://cloister.dev/problems/refused-by-broker: resource owner/models/denied refused by the key broker (403 policy-denied): policy refuses owner/models/denied to this TEE',
        '',
      ].join('\n'),
    );
  });

  it('a second agent on the same socket is refused; SIGTERM removes the socket', async () => {
    const second = cli(['agent', 'serve', '--socket', socket, '--kbs', kbs.url, '--tee', 'sample']);
    const r = await second.done;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`another process is listening on ${socket}`);

    const s2 = join(work, 'b.sock');
    const third = cli(['agent', 'serve', '--socket', s2, '--kbs', kbs.url, '--tee', 'sample']);
    await waitFor(third.stderr, /listening on/, third.child);
    third.child.kill('SIGTERM');
    const t = await third.done;
    expect(t.code).toBe(0);
    expect(existsSync(s2)).toBe(false);
  });
});
