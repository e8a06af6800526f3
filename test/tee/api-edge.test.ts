import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_API_STATUS, serveAgentApi } from '../../src/tee/api.js';
import { CollectionError } from '../../src/tee/evidence/types.js';
import { KbsClientError } from '../../src/tee/kbs-client.js';
import { AgentError } from '../../src/tee/keys.js';

/** The local API in this process, over a broker and a TEE that fail as each test asks. */
const dir = mkdtempSync(join(tmpdir(), 'cloister-api-'));
const socket = join(dir, 'agent.sock');
const failures = new Map<string, Error>();
const lines: string[] = [];
let server: Awaited<ReturnType<typeof serveAgentApi>>;

const options: Parameters<typeof serveAgentApi>[1] = {
  kbs: {
    async getResource(path) {
      const e = failures.get(path);
      if (e) throw e;
      return new TextEncoder().encode(`value of ${path}`);
    },
    async token() {
      throw new KbsClientError('the broker is down');
    },
  },
  tee: {
    kind: 'sample',
    attester: {
      source: 'test',
      insecure: true,
      async collect() {
        throw new CollectionError('tsm-unavailable', 'no configfs-tsm here');
      },
    },
  },
  log: (line) => lines.push(line),
};

beforeAll(async () => {
  server = await serveAgentApi(socket, options);
});
afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

function call(path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    request({ socketPath: socket, path, method, agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }),
      );
    })
      .on('error', reject)
      .end();
  });
}

describe('the local API in-process: each failure below it gets its row of AGENT_API_STATUS', () => {
  it('listens on a 0600 socket', () => {
    expect(statSync(socket).mode & 0o777).toBe(0o600);
  });

  it('broker, agent and evidence failures become problem documents with the table’s status', async () => {
    failures.set('a/b/gone', new KbsClientError('not there', 404));
    failures.set('a/b/denied', new KbsClientError('refused', 401));
    failures.set('a/b/broken', new KbsClientError('broker failed', 500));
    failures.set('a/b/kek', new AgentError('bad-kek', 'not a KEK'));
    failures.set('a/b/bug', new Error('unexpected'));
    const cases: [string, number, string][] = [
      ['/resource/a/b/fine', 200, ''],
      ['/resource/a/b/gone', 404, 'resource-not-found'],
      ['/resource/a/b/denied', 403, 'refused-by-broker'],
      ['/resource/a/b/broken', 502, 'broker-error'],
      ['/resource/a/b/kek', 502, 'bad-kek'],
      ['/resource/a/b/bug', 500, 'internal'],
      ['/token', 502, 'broker-unreachable'],
      ['/evidence?report_data=00', 500, 'evidence-tsm-unavailable'],
      ['/evidence?report_data=0', 400, 'bad-report-data'],
    ];
    for (const [path, status, type] of cases) {
      const r = await call(path);
      expect(r.status, path).toBe(status);
      if (status === 200) continue;
      expect(r.type, path).toBe('application/problem+json');
      expect(JSON.parse(r.body), path).toMatchObject({
        type: `https://cloister.dev/problems/${type}`,
        status,
      });
    }
    expect(AGENT_API_STATUS['agent-failed']).toBe(502);
    expect(lines).toContain('GET /resource/a/b/fine → 200');
    expect(lines.some((l) => l.startsWith('GET /token → 502 broker-unreachable: '))).toBe(true);
  });

  it('streamed bodies need HTTP/1.1: an HTTP/1.0 client could not tell a cut body from a whole one', async () => {
    for (const path of ['/unseal', '/seal?to=kbs:///a/b/c']) {
      const answer = await new Promise<string>((resolve, reject) => {
        const s = connect(socket);
        let got = '';
        s.on('data', (d) => {
          got += d;
        });
        s.on('end', () => resolve(got));
        s.on('error', reject);
        s.end(`POST ${path} HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc`);
      });
      expect(answer, path).toMatch(/^HTTP\/1\.[01] 505 /);
      expect(answer, path).toContain('https://cloister.dev/problems/http-version');
    }
  });

  it('a wrong method is 405 (HEAD included), an unknown path 404', async () => {
    expect((await call('/healthz', 'HEAD')).status).toBe(405);
    expect((await call('/unseal')).status).toBe(405);
    const nope = await call('/nope', 'DELETE');
    expect([nope.status, JSON.parse(nope.body).detail]).toEqual([
      404,
      'no route DELETE /nope (see docs/agent-api.md)',
    ]);
  });
});

describe('the socket path', () => {
  it('a missing folder is named, with what to do (not EACCES)', async () => {
    const missing = join(dir, 'missing', 'x.sock');
    const e = await serveAgentApi(missing, options).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(AgentError);
    expect(e).toMatchObject({ code: 'socket-path' });
    expect((e as Error).message).toBe(
      `${join(dir, 'missing')}: the folder for --socket ${missing} does not exist; create it (mkdir -p ${join(dir, 'missing')}) or choose another --socket`,
    );
  });

  it('a file where the folder should be is refused in one line', async () => {
    const e = await serveAgentApi(join(dir, 'agent.sock', 'x.sock'), options).catch((err: unknown) => err);
    expect(e).toMatchObject({
      code: 'socket-path',
      message: `${socket}: not a folder, so --socket ${join(socket, 'x.sock')} cannot be made there`,
    });
  });
});
