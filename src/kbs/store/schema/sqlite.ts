/**
 * SQLite schema, embedded so that it ships in dist/ with the code. Times are ISO 8601 UTC text with
 * milliseconds (text order = time order); binary values are BLOBs. `user_version` records the schema
 * version for later migrations.
 */
/** 2: log_nodes (stored subtree hashes; a database of version 1 is backfilled when opened). */
export const SQLITE_SCHEMA_VERSION = 2;

export const SQLITE_SCHEMA = `
CREATE TABLE IF NOT EXISTS repositories (
  name TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  created_at TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS resources (
  path TEXT PRIMARY KEY,
  repository TEXT NOT NULL REFERENCES repositories(name),
  type TEXT NOT NULL,
  tag TEXT NOT NULL,
  tenant TEXT NOT NULL,
  version INTEGER NOT NULL CHECK (version >= 1),
  size INTEGER NOT NULL CHECK (size >= 0),
  content_type TEXT NOT NULL,
  master_key_id TEXT NOT NULL,
  ciphertext BLOB NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS resources_by_tenant ON resources(tenant, path);

CREATE TABLE IF NOT EXISTS policies (
  scope_kind TEXT NOT NULL CHECK (scope_kind IN ('resource', 'repository', 'default')),
  scope_target TEXT NOT NULL,
  version INTEGER NOT NULL CHECK (version >= 1),
  tenant TEXT NOT NULL,
  source TEXT NOT NULL,
  created_at TEXT NOT NULL,
  actor TEXT NOT NULL,
  PRIMARY KEY (scope_kind, scope_target, version)
) STRICT;

CREATE TABLE IF NOT EXISTS reference_values (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  tee TEXT NOT NULL,
  name TEXT NOT NULL,
  version INTEGER NOT NULL CHECK (version >= 1),
  vals TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT,
  note TEXT,
  UNIQUE (tenant, tee, name, version)
) STRICT;

CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY,
  tee TEXT NOT NULL,
  nonce TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('challenged', 'attested')),
  expires_at TEXT NOT NULL,
  token TEXT,
  tee_pubkey TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);

CREATE TABLE IF NOT EXISTS log_entries (
  idx INTEGER PRIMARY KEY CHECK (idx >= 0),
  canonical BLOB NOT NULL,
  leaf_hash BLOB NOT NULL
) STRICT;

-- Hash of every complete perfect subtree of level >= 1 of the log (entries idx*2^level ...),
-- written in the transaction of the entry that completes it.
CREATE TABLE IF NOT EXISTS log_nodes (
  level INTEGER NOT NULL CHECK (level >= 1),
  idx INTEGER NOT NULL CHECK (idx >= 0),
  hash BLOB NOT NULL,
  PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS checkpoints (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  size INTEGER NOT NULL CHECK (size >= 0),
  note TEXT NOT NULL,
  created_at TEXT NOT NULL
) STRICT;
`;
