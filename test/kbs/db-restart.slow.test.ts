/**
 * The broker on a PostgreSQL server that this test starts itself (initdb + pg_ctl into a temporary
 * directory, on a free port) and restarts under load: once cleanly (`-m fast`) and once as a crash
 * (`-m immediate`), each time down for longer than the store's retry window. The broker must live
 * through both, answer every request with a success or a 503 with Retry-After, report itself not
 * ready while the database is down and ready again after, and keep every acknowledged write and a
 * verifiable log.
 *
 * Needs the PostgreSQL server binaries (CLOISTER_PG_BIN, default /usr/lib/postgresql/15/bin); without
 * them the suite is skipped, unless CLOISTER_REQUIRE_PG is set. As root, the server runs as the
 * `postgres` user (initdb refuses root).
 */
import { execFile } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { checkAfterLoad, prepareLoad, RELEASED, runLoad } from './db-load.js';
import { sampleAttester, type TestBroker, testBroker, until } from './helpers.js';

const run = promisify(execFile);
const BIN = process.env.CLOISTER_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const HAVE = existsSync(join(BIN, 'initdb')) && existsSync(join(BIN, 'pg_ctl'));
const REQUIRED = Boolean(process.env.CLOISTER_REQUIRE_PG);
const SKIP_REASON = HAVE
  ? ''
  : ` (skipped: no initdb/pg_ctl in ${BIN}; set CLOISTER_REQUIRE_PG to fail instead)`;

/** A PostgreSQL server of this test's own. */
class Server {
  private constructor(
    private readonly dir: string,
    readonly port: number,
    private readonly as: string[],
  ) {}

  static async create(): Promise<Server> {
    const dir = mkdtempSync(join(tmpdir(), 'cloister-pg-'));
    let as: string[] = [];
    if (process.getuid?.() === 0) {
      const id = async (flag: string) => Number((await run('id', [flag, 'postgres'])).stdout.trim());
      chownSync(dir, await id('-u'), await id('-g'));
      as = ['runuser', '-u', 'postgres', '--'];
    }
    const s = new Server(dir, await freePort(), as);
    await s.exec('initdb', ['-D', s.data, '-U', 'postgres', '-A', 'trust', '--no-sync']);
    await s.start();
    return s;
  }

  private get data(): string {
    return join(this.dir, 'data');
  }

  private async exec(tool: string, args: string[]): Promise<void> {
    const [cmd, ...rest] = [...this.as, join(BIN, tool), ...args];
    await run(cmd!, rest, { timeout: 120_000 });
  }

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  start(): Promise<void> {
    return this.exec('pg_ctl', [
      ...['-D', this.data, '-l', join(this.dir, 'server.log'), '-w', '-t', '60'],
      ...['-o', `-p ${this.port} -c listen_addresses=127.0.0.1 -k ${this.dir}`, 'start'],
    ]);
  }

  stop(mode: 'fast' | 'immediate'): Promise<void> {
    return this.exec('pg_ctl', ['-D', this.data, '-m', mode, '-w', '-t', '60', 'stop']);
  }

  async destroy(): Promise<void> {
    await this.stop('immediate').catch(() => {});
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise((r) => s.close(r));
  return port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(!HAVE && !REQUIRED)(`broker across restarts of its PostgreSQL server${SKIP_REASON}`, () => {
  let pg: Server;
  let b: TestBroker;
  beforeAll(async () => {
    if (!HAVE) throw new Error(`CLOISTER_REQUIRE_PG is set but ${BIN} has no initdb/pg_ctl`);
    pg = await Server.create();
    b = await testBroker({ devMode: true, db: `${pg.url}?schema=kbs` });
    await prepareLoad(b);
  });
  afterAll(async () => {
    await b?.close();
    await pg?.destroy();
  });

  const readyz = () => fetch(new URL('/readyz', b.url));

  it('lives through a clean restart and a crash, with only successes and 503s', async () => {
    let running = true;
    let crashed = false;
    const load = runLoad(b, {
      running: () => running,
      workers: 4,
      minRounds: 3,
      // A crash empties the UNLOGGED sessions table: a handshake in flight must start again.
      allow: (status, type) => crashed && status === 401 && type === 'unknown-session',
    });
    await sleep(1000);
    for (const mode of ['fast', 'immediate'] as const) {
      await pg.stop(mode);
      crashed ||= mode === 'immediate';
      const down = await until(async () => {
        const r = await readyz();
        return r.status === 503 ? r : undefined;
      }, 'readyz to report the database down');
      expect(down.headers.get('retry-after')).toBeTruthy();
      expect((await down.json()).type).toMatch(/not-ready$/);
      // Longer than the store's retry window (5 s): some requests must give up with a 503.
      await sleep(6000);
      await pg.start();
      await until(async () => ((await readyz()).status === 200 ? true : undefined), 'readyz to recover');
      await sleep(1000);
    }
    running = false;
    const result = await load;
    expect(result.unavailable).toBeGreaterThan(0);
    expect(result.releases).toBeGreaterThan(0);
    await checkAfterLoad(b, result);
    // And the broker serves as before.
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(new TextDecoder().decode(await client.getResource(RELEASED))).toBe('a key that must survive');
  });
});
