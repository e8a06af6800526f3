import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../../src/kbs/store/sqlite.js';
import { expectAllNodes, expectUnbrokenChain, logFields, storeConformance, testLog } from './conformance.js';
import { SQLITE_SCHEMA_V1, V1_ROWS } from './fixtures/schema-v1.js';
import { expectMigratedFromV1, expectMigratedLog, v1LogEntries } from './migration.js';

const dir = mkdtempSync(join(tmpdir(), 'cloister-sqlite-'));
let n = 0;
const file = () => join(dir, `kbs-${n++}.db`);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function open(path: string, build = testLog().build): Promise<SqliteStore> {
  const s = new SqliteStore(path, { buildLogEntry: build });
  await s.migrate();
  return s;
}

storeConformance('sqlite (file)', (opts) => {
  const s = new SqliteStore(file(), opts);
  return s.migrate().then(() => s);
});

storeConformance('sqlite (:memory:)', (opts) => {
  const s = new SqliteStore(':memory:', opts);
  return s.migrate().then(() => s);
});

describe('SqliteStore schema migration', () => {
  it('turns version 1 operator sentinels into the operator (NULL), keeping foreign keys', async () => {
    const path = file();
    const old = new Database(path);
    old.exec(SQLITE_SCHEMA_V1);
    old.exec(V1_ROWS("x'0102'"));
    old.pragma('user_version = 1');
    old.close();
    const s = await open(path);
    try {
      await expectMigratedFromV1(s);
      const db = (s as unknown as { db: Database.Database }).db;
      expect(db.pragma('user_version', { simple: true })).toBe(3);
      expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
      expect(() =>
        db
          .prepare(
            "INSERT INTO resources VALUES ('none/k/a', 'none', 'k', 'a', NULL, 1, 1, 'o', 'mk1', x'01', 't', 't')",
          )
          .run(),
      ).toThrow(/FOREIGN KEY/);
    } finally {
      await s.close();
    }
    // Opening again changes nothing.
    const again = await open(path);
    expect(await again.repositoryOwner('Shared')).toEqual({ tenant: null });
    await again.close();
  });
});

describe('SqliteStore durability', () => {
  it('keeps everything across close and reopen, and the chain continues', async () => {
    const path = file();
    const a = await open(path);
    await a.createRepository('repo1', 't1', logFields('repository.create'));
    await a.putResource(
      {
        path: 'repo1/key/a',
        repository: 'repo1',
        type: 'key',
        tag: 'a',
        tenant: 't1',
        size: 3,
        contentType: 'text/plain',
        secret: { masterKeyId: 'mk1', ciphertext: Uint8Array.of(1, 2, 3) },
      },
      logFields('resource.put'),
    );
    await a.createSession({
      id: 's',
      tee: 'sample',
      nonce: 'n',
      status: 'challenged',
      expiresAt: '2099-01-01T00:00:00Z',
    });
    await a.saveCheckpoint(2, 'cp');
    await a.close();

    const b = await open(path);
    expect(await b.repositoryOwner('repo1')).toEqual({ tenant: 't1' });
    expect((await b.getResource('repo1/key/a'))!.secret.ciphertext).toEqual(Uint8Array.of(1, 2, 3));
    expect((await b.getSession('s'))!.status).toBe('challenged');
    expect(await b.latestCheckpoint()).toEqual({ size: 2, note: 'cp' });
    await b.appendLog(logFields('release'));
    expectUnbrokenChain(await b.logEntries(0, 3));
    await b.close();
  });

  it('runs in WAL mode with synchronous=FULL and foreign keys on', async () => {
    const path = file();
    const s = await open(path);
    // Reach the connection to read back the pragmas it runs with; the store does not expose it.
    const db = (s as unknown as { db: import('better-sqlite3').Database }).db;
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('synchronous', { simple: true })).toBe(2); // FULL
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    expect(db.pragma('busy_timeout', { simple: true })).toBe(5000);
    // A session write relaxes fsync for itself only.
    await s.createSession({
      id: 's',
      tee: 'sample',
      nonce: 'n',
      status: 'challenged',
      expiresAt: '2099-01-01T00:00:00Z',
    });
    expect(db.pragma('synchronous', { simple: true })).toBe(2);
    await s.close();
  });

  it('migrates a version 1 database with a log in one step: operator NULLs and every subtree hash', async () => {
    const path = file();
    const old = new Database(path);
    old.exec(SQLITE_SCHEMA_V1);
    old.exec(V1_ROWS("x'0102'"));
    const insert = old.prepare('INSERT INTO log_entries (idx, canonical, leaf_hash) VALUES (?, ?, ?)');
    for (const e of v1LogEntries(45)) insert.run(e.index, Buffer.from(e.canonical), Buffer.from(e.leafHash));
    old.pragma('user_version = 1');
    old.close();
    const s = await open(path);
    try {
      await expectMigratedLog(s, 45);
      await expectMigratedFromV1(s);
      // expectMigratedFromV1 appended two entries: the chain and the stored subtrees go on from the migrated log.
      await expectMigratedLog(s, 47);
    } finally {
      await s.close();
    }
    // Opening again changes nothing.
    const again = await open(path);
    try {
      const db = (again as unknown as { db: Database.Database }).db;
      expect(db.pragma('user_version', { simple: true })).toBe(3);
      expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
      await expectMigratedLog(again, 47);
      expect(await again.repositoryOwner('Shared')).toEqual({ tenant: null });
    } finally {
      await again.close();
    }
  });

  it('rebuilds the subtree hashes of a log written before they were kept, on open and on append', async () => {
    const path = file();
    const s = await open(path);
    await Promise.all(Array.from({ length: 37 }, (_, i) => s.appendLog(logFields('release', `e${i}`))));
    const db = (s as unknown as { db: import('better-sqlite3').Database }).db;
    // A database of schema version 1: no log_nodes table.
    db.exec('DROP TABLE log_nodes');
    db.pragma('user_version = 1');
    await s.close();
    const again = await open(path);
    expect(
      (again as unknown as { db: import('better-sqlite3').Database }).db.pragma('user_version', {
        simple: true,
      }),
    ).toBe(3);
    await expectAllNodes(again);
    // An older program appended entries 32… without subtree hashes: the next append rebuilds them.
    (again as unknown as { db: import('better-sqlite3').Database }).db.exec(
      'DELETE FROM log_nodes WHERE (idx + 1) * (1 << level) > 32',
    );
    await again.appendLog(logFields('release', 'after'));
    expect(await again.logSize()).toBe(38);
    await expectAllNodes(again);
    expectUnbrokenChain(await again.logEntries(0, 38));
    await again.close();
  });

  it('refuses a database written by a newer schema version', async () => {
    const path = file();
    const s = await open(path);
    (s as unknown as { db: import('better-sqlite3').Database }).db.pragma('user_version = 99');
    await s.close();
    const again = new SqliteStore(path, { buildLogEntry: testLog().build });
    await expect(again.migrate()).rejects.toThrow(/newer than this program/);
    await again.close();
  });
});

describe('SqliteStore across processes', () => {
  const child = fileURLToPath(new URL('./fixtures/sqlite-writer.mjs', import.meta.url));
  beforeAll(() => {
    if (!existsSync(fileURLToPath(new URL('../../../dist/kbs/store/sqlite.js', import.meta.url)))) {
      throw new Error(
        'dist/ is missing: the child processes run the compiled store, run `npm run build` first',
      );
    }
  });

  it('two processes appending to one file at once produce one contiguous, unbroken chain', async () => {
    const path = file();
    await (await open(path)).close();
    const run = () =>
      new Promise<void>((resolve, reject) => {
        const p = spawn(process.execPath, [child, path, 'appends', '150'], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let err = '';
        p.stderr.on('data', (d: Buffer) => {
          err += d;
        });
        p.on('close', (code) =>
          code === 0 ? resolve() : reject(new Error(`writer failed (${code}): ${err}`)),
        );
      });
    await Promise.all([run(), run()]);
    const s = await open(path);
    try {
      expect(await s.logSize()).toBe(300);
      expectUnbrokenChain(await s.logEntries(0, 300));
    } finally {
      await s.close();
    }
  });

  it('a killed writer loses no write it acknowledged, and the chain stays unbroken', async () => {
    const child = fileURLToPath(new URL('./fixtures/sqlite-writer.mjs', import.meta.url));
    if (!existsSync(fileURLToPath(new URL('../../../dist/kbs/store/sqlite.js', import.meta.url)))) {
      throw new Error(
        'dist/ is missing: the child process runs the compiled store, run `npm run build` first',
      );
    }
    const path = file();
    const p = spawn(process.execPath, [child, path], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stderr.on('data', (d: Buffer) => {
      err += d;
    });
    // 'close' comes after the child exited AND its stdout was read to the end.
    const closed = new Promise<NodeJS.Signals | null>((resolve) =>
      p.on('close', (_code, signal) => resolve(signal)),
    );
    await new Promise<void>((resolve, reject) => {
      p.stdout.on('data', (d: Buffer) => {
        out += d;
        // Kill in the middle of the stream of writes, not at a quiet moment.
        if (out.split('\n').length > 150) resolve();
      });
      p.on('exit', () => reject(new Error(`writer exited early: ${err}`)));
    });
    p.kill('SIGKILL');
    expect(await closed).toBe('SIGKILL');

    const acks = out
      .split('\n')
      .filter((l) => l.startsWith('ack '))
      .map((l) => l.split(' '));
    expect(acks.length).toBeGreaterThanOrEqual(150);
    const s = await open(path);
    try {
      const entries = await s.logEntries(0, await s.logSize());
      expectUnbrokenChain(entries);
      // Each ack is one logged write, so the log holds at least as many entries, in the same order.
      expect(entries.length).toBeGreaterThanOrEqual(acks.length);
      const logged = entries.map(
        (e) => JSON.parse(new TextDecoder().decode(e.canonical)) as { kind: string; subject: string },
      );
      acks.forEach((a, i) => {
        const [, what, subject] = a;
        if (what === 'repo') expect(logged[i]!.kind).toBe('repository.create');
        else
          expect(logged[i]).toMatchObject({
            kind: what === 'put' ? 'resource.put' : what === 'rotate' ? 'resource.rotate' : 'release',
            subject,
          });
      });
      for (const [, what, subject] of acks) {
        if (what === 'put') expect(await s.getResource(subject!)).toBeDefined();
        if (what === 'rotate') expect((await s.getResource(subject!))!.version).toBe(2);
      }
    } finally {
      await s.close();
    }
  });
});

describe('SqliteStore schema version 3', () => {
  it('opens a version 2 database by adding the training tables', async () => {
    const path = file();
    const s = await open(path);
    const db = (s as unknown as { db: Database.Database }).db;
    db.exec('DROP TABLE train_receipt_recipients; DROP TABLE train_receipts; DROP TABLE train_checkpoints;');
    db.pragma('user_version = 2');
    await s.close();
    const again = await open(path);
    try {
      expect(
        (again as unknown as { db: Database.Database }).db.pragma('user_version', { simple: true }),
      ).toBe(3);
      const cp = { number: 1, sha256: '1'.repeat(64) };
      expect(
        await again.advanceTrainCheckpoint('a'.repeat(64), null, cp, logFields('train-checkpoint')),
      ).toEqual({
        advanced: true,
      });
      expect(await again.trainCheckpoint('a'.repeat(64))).toEqual(cp);
    } finally {
      await again.close();
    }
  });
});
