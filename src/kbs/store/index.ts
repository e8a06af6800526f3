/**
 * Opens the key broker's store named by a URL:
 *   `sqlite:PATH`         an SQLite file (WAL), created if absent — the embedded default
 *   `sqlite::memory:`     an SQLite database in memory (tests)
 *   `postgres://…` / `postgresql://…`  PostgreSQL, for several replicas; `?schema=NAME` picks the schema
 *   `memory:`             a store in process memory (tests)
 * The store is migrated (tables created) before it is returned.
 */
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { StoreOptions } from './common.js';
import { MemoryStore } from './memory.js';
import { PostgresStore, type PostgresStoreOptions } from './postgres.js';
import { SqliteStore, type SqliteStoreOptions } from './sqlite.js';
import type { KbsStore } from './types.js';

export type { StoreOptions } from './common.js';
export { MemoryStore } from './memory.js';
export { PostgresStore, type PostgresStoreOptions } from './postgres.js';
export { SqliteStore, type SqliteStoreOptions } from './sqlite.js';
export * from './types.js';

export type OpenStoreOptions = StoreOptions &
  Pick<SqliteStoreOptions, 'synchronous' | 'busyTimeoutMs'> &
  Pick<PostgresStoreOptions, 'schema' | 'poolSize'>;

export async function openStore(url: string, opts: OpenStoreOptions): Promise<KbsStore> {
  let store: KbsStore;
  if (url === 'memory:') {
    store = new MemoryStore(opts);
  } else if (url.startsWith('sqlite:')) {
    const file = url.slice('sqlite:'.length);
    if (file === '')
      throw new TypeError('sqlite: URL needs a file path, e.g. sqlite:/var/lib/cloister/kbs.db');
    // SQLite creates the file, not its folder; its own error ("unable to open database file") names neither.
    if (file !== ':memory:') {
      const dir = dirname(file);
      const isDir = await stat(dir).then(
        (st) => st.isDirectory(),
        () => false,
      );
      if (!isDir) throw new TypeError(`${url}: directory ${dir} does not exist`);
    }
    store = new SqliteStore(file, opts);
  } else if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    store = new PostgresStore(url, opts);
  } else {
    throw new TypeError(
      `unsupported store URL scheme ${JSON.stringify(url.split(':')[0])}: use sqlite:PATH, sqlite::memory:, postgres://… or memory:`,
    );
  }
  try {
    await store.migrate();
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}
