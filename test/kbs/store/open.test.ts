import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { MemoryStore, openStore, PostgresStore, SqliteStore } from '../../../src/kbs/store/index.js';
import { logFields, testLog } from './conformance.js';

const PG = process.env.CLOISTER_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

describe('openStore', () => {
  it('opens memory: and sqlite::memory: stores, migrated and ready', async () => {
    for (const [url, kind] of [
      ['memory:', MemoryStore],
      ['sqlite::memory:', SqliteStore],
    ] as const) {
      const s = await openStore(url, { buildLogEntry: testLog().build });
      expect(s).toBeInstanceOf(kind);
      await s.appendLog(logFields('release'));
      expect(await s.logSize()).toBe(1);
      await s.close();
    }
  });

  it('opens sqlite:PATH, creating the file, and finds the data again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cloister-open-'));
    try {
      const url = `sqlite:${join(dir, 'kbs.db')}`;
      const a = await openStore(url, { buildLogEntry: testLog().build });
      await a.appendLog(logFields('release'));
      await a.close();
      const b = await openStore(url, { buildLogEntry: testLog().build });
      expect(await b.logSize()).toBe(1);
      await b.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(PG === 'skip')('opens postgres:// with ?schema=', async () => {
    const schema = `cloister_test_open_${randomBytes(4).toString('hex')}`;
    const s = await openStore(`${PG}?schema=${schema}`, { buildLogEntry: testLog().build });
    try {
      expect(s).toBeInstanceOf(PostgresStore);
      await s.appendLog(logFields('release'));
      expect(await s.logSize()).toBe(1);
    } finally {
      await s.close();
      const c = new pg.Client({ connectionString: PG });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await c.end();
    }
  });

  it('refuses an unknown scheme and an sqlite: URL without a path', async () => {
    await expect(openStore('mysql://host/db', { buildLogEntry: testLog().build })).rejects.toThrow(
      /unsupported store URL scheme "mysql"/,
    );
    await expect(openStore('sqlite:', { buildLogEntry: testLog().build })).rejects.toThrow(
      /needs a file path/,
    );
  });
});
