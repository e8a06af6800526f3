/**
 * SQLite schema, embedded so that it ships in dist/ with the code. Times are ISO 8601 UTC text with
 * milliseconds (text order = time order); binary values are BLOBs. `user_version` records the schema
 * version for later migrations.
 *
 * A NULL `tenant` is the operator's (see `Owner` in ../types.ts): never a reserved name, so a query for
 * a tenant (`tenant = ?`) can never match the operator's rows. Version 2 made those columns nullable.
 */
/**
 * 2: nullable tenants (the operator is NULL) and log_nodes (stored subtree hashes; a database of version 1 is migrated and backfilled when opened).
 * 3: confidential training: train_checkpoints, train_receipts, train_receipt_recipients (new tables only: a
 *    database of version 2 gets them when opened).
 */
export const SQLITE_SCHEMA_VERSION = 3;

export const SQLITE_SCHEMA = `
CREATE TABLE IF NOT EXISTS repositories (
  name TEXT PRIMARY KEY,
  tenant TEXT CHECK (tenant <> ''),
  created_at TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS resources (
  path TEXT PRIMARY KEY,
  repository TEXT NOT NULL REFERENCES repositories(name),
  type TEXT NOT NULL,
  tag TEXT NOT NULL,
  tenant TEXT CHECK (tenant <> ''),
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
  tenant TEXT CHECK (tenant <> ''),
  source TEXT NOT NULL,
  created_at TEXT NOT NULL,
  actor TEXT NOT NULL,
  PRIMARY KEY (scope_kind, scope_target, version)
) STRICT;

CREATE TABLE IF NOT EXISTS reference_values (
  id TEXT PRIMARY KEY,
  tenant TEXT CHECK (tenant <> ''),
  tee TEXT NOT NULL,
  name TEXT NOT NULL,
  version INTEGER NOT NULL CHECK (version >= 1),
  vals TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT,
  note TEXT
) STRICT;
-- NULLs are distinct in a UNIQUE constraint; '' stands for the operator only inside this index (the
-- CHECK above keeps it out of the column).
CREATE UNIQUE INDEX IF NOT EXISTS reference_values_version
  ON reference_values (ifnull(tenant, ''), tee, name, version);

CREATE TABLE IF NOT EXISTS admin_token_revocations (
  token_id TEXT PRIMARY KEY,
  expires_at TEXT,
  revoked_at TEXT NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT
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

-- Confidential training (src/kbs/train.ts). Each job's latest checkpoint, moved only by
-- compare-and-set (UPDATE … WHERE number = prev AND sha256 = prev), so a host cannot roll a job back.
CREATE TABLE IF NOT EXISTS train_checkpoints (
  job TEXT PRIMARY KEY CHECK (length(job) = 64),
  number INTEGER NOT NULL CHECK (number >= 1),
  sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
  updated_at TEXT NOT NULL
) STRICT;

-- Training receipts by the SHA-256 of their Statement (the DSSE payload), one per job (the store
-- checks under its write lock); facts: JSON {subjects, trainer, outputs, tee}.
CREATE TABLE IF NOT EXISTS train_receipts (
  sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
  job TEXT NOT NULL,
  log_index INTEGER NOT NULL CHECK (log_index >= 0),
  recorded_at TEXT NOT NULL,
  facts TEXT NOT NULL,
  envelope BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS train_receipts_by_job ON train_receipts(job);

-- The kbs:/// URIs a receipt's outputs are sealed to: what a release decision looks receipts up by.
CREATE TABLE IF NOT EXISTS train_receipt_recipients (
  recipient TEXT NOT NULL,
  receipt TEXT NOT NULL REFERENCES train_receipts(sha256),
  PRIMARY KEY (recipient, receipt)
) STRICT, WITHOUT ROWID;
`;

/**
 * Version 1 stored the operator as in-band tenant names: `default` owned what admins created, `*` held
 * broker-wide policies and reference values. Both become NULL. Reference values of `default` stay as
 * they were (inert: no tenant can be named so any more, and no repository is owned by it) rather than
 * become operator-wide, which would let whoever added them deny every tenant's releases.
 * SQLite cannot drop NOT NULL, so the four tables are rebuilt; run with foreign keys off.
 */
const operator = (col: string, sentinels: string) =>
  `CASE WHEN ${col} IN (${sentinels}) THEN NULL ELSE ${col} END`;
export const SQLITE_MIGRATE_1_TO_2 = `
DROP INDEX IF EXISTS resources_by_tenant;
DROP INDEX IF EXISTS reference_values_version;
ALTER TABLE repositories RENAME TO repositories_v1;
ALTER TABLE resources RENAME TO resources_v1;
ALTER TABLE policies RENAME TO policies_v1;
ALTER TABLE reference_values RENAME TO reference_values_v1;
${SQLITE_SCHEMA}
INSERT INTO repositories (name, tenant, created_at)
  SELECT name, ${operator('tenant', "'default', '*', ''")}, created_at FROM repositories_v1;
INSERT INTO resources (path, repository, type, tag, tenant, version, size, content_type, master_key_id,
    ciphertext, created_at, updated_at)
  SELECT path, repository, type, tag, ${operator('tenant', "'default', '*', ''")}, version, size,
    content_type, master_key_id, ciphertext, created_at, updated_at FROM resources_v1;
INSERT INTO policies (scope_kind, scope_target, version, tenant, source, created_at, actor)
  SELECT scope_kind, scope_target, version, ${operator('tenant', "'default', '*', ''")}, source,
    created_at, actor FROM policies_v1;
INSERT INTO reference_values (id, tenant, tee, name, version, vals, created_at, expires_at, note)
  SELECT id, ${operator('tenant', "'*', ''")}, tee, name, version, vals, created_at, expires_at, note
    FROM reference_values_v1;
DROP TABLE resources_v1;
DROP TABLE repositories_v1;
DROP TABLE policies_v1;
DROP TABLE reference_values_v1;
`;
