/**
 * better-sqlite3, loaded when the first SQLite store is opened. It is an optional dependency: npm
 * installs it with `cloister` (the embedded store is the broker's default), but an install where its
 * native build fails (no prebuilt binary reachable, no compiler) still succeeds, and a program that
 * never opens an SQLite store (the client SDK, a PostgreSQL broker) never loads it. Opening one
 * without it throws MissingDependencyError ('install better-sqlite3: npm install …').
 *
 * `Database` stands in for the package's default export: `new Database(file)` and its types.
 */
import type BetterSqlite3 from 'better-sqlite3';
import { requireOptional } from '../../util/optional/node.js';

// A function, not a class or an arrow, so that `new` returns the real database object it builds.
const Database = function open(...args: ConstructorParameters<typeof BetterSqlite3>) {
  const Real = requireOptional<typeof BetterSqlite3>('better-sqlite3', 'the SQLite store (sqlite: URLs)');
  return new Real(...args);
} as unknown as typeof BetterSqlite3;

// The package's type names, as `Database.Statement` etc., with its own defaults (hence `any`).
declare namespace Database {
  type Database = BetterSqlite3.Database;
  // biome-ignore lint/complexity/noBannedTypes: the package's own constraint for named parameters.
  type Statement<B extends unknown[] | {} = unknown[], R = unknown> = BetterSqlite3.Statement<B, R>;
  // biome-ignore lint/suspicious/noExplicitAny: the package's own constraint.
  type Transaction<F extends (...params: any[]) => unknown = (...params: any[]) => unknown> =
    BetterSqlite3.Transaction<F>;
}

export default Database;
