/**
 * PostgreSQL schema, embedded so that it ships in dist/ with the code. The tables live in the schema
 * named by the connection's search_path. Times are ISO 8601 UTC text with milliseconds, exactly as in
 * SQLite, so both backends return identical strings; binary values are BYTEA.
 *
 * `log_head` is a one-row table holding the log's size and last leaf hash: every append locks it
 * (SELECT … FOR UPDATE), which serialises appends from all replicas into one chain.
 *
 * `sessions` is UNLOGGED: a KBS session lives for minutes and a client that loses one simply starts a
 * new handshake, so session writes skip the WAL flush that every logged commit waits for. A crash of
 * the database empties the table; nothing the transparency log records lives there.
 *
 * A NULL `tenant` is the operator's (see `Owner` in ../types.ts): never a reserved name, so a query for
 * a tenant (`tenant = $1`) can never match the operator's rows. Version 2 made those columns nullable.
 */
/**
 * 2: nullable tenants (the operator is NULL) and log_nodes (stored subtree hashes; a database of version 1 is migrated and backfilled by migrate).
 * 3: confidential training: train_checkpoints, train_receipts, train_receipt_recipients (new tables only).
 */
export const POSTGRES_SCHEMA_VERSION = 3;

export const POSTGRES_SCHEMA = `
CREATE TABLE IF NOT EXISTS schema_meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS repositories (
  name TEXT PRIMARY KEY,
  tenant TEXT CHECK (tenant <> ''),
  created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS resources (
  path TEXT PRIMARY KEY,
  repository TEXT NOT NULL REFERENCES repositories(name),
  type TEXT NOT NULL,
  tag TEXT NOT NULL,
  tenant TEXT CHECK (tenant <> ''),
  version INTEGER NOT NULL CHECK (version >= 1),
  size BIGINT NOT NULL CHECK (size >= 0),
  content_type TEXT NOT NULL,
  master_key_id TEXT NOT NULL,
  ciphertext BYTEA NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
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
);

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
);
-- NULLs are distinct in a UNIQUE constraint; '' stands for the operator only inside this index (the
-- CHECK above keeps it out of the column).
CREATE UNIQUE INDEX IF NOT EXISTS reference_values_version
  ON reference_values ((coalesce(tenant, '')), tee, name, version);

CREATE TABLE IF NOT EXISTS admin_token_revocations (
  token_id TEXT PRIMARY KEY,
  expires_at TEXT,
  revoked_at TEXT NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT
);

CREATE UNLOGGED TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY,
  tee TEXT NOT NULL,
  nonce TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('challenged', 'attested')),
  expires_at TEXT NOT NULL,
  token TEXT,
  tee_pubkey TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);

CREATE TABLE IF NOT EXISTS log_entries (
  idx BIGINT PRIMARY KEY CHECK (idx >= 0),
  canonical BYTEA NOT NULL,
  leaf_hash BYTEA NOT NULL
);

CREATE TABLE IF NOT EXISTS log_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  size BIGINT NOT NULL CHECK (size >= 0),
  leaf_hash BYTEA
);
INSERT INTO log_head (id, size, leaf_hash) VALUES (1, 0, NULL) ON CONFLICT (id) DO NOTHING;

-- Hash of every complete perfect subtree of level >= 1 of the log (entries idx*2^level ...),
-- written in the transaction of the entry that completes it.
CREATE TABLE IF NOT EXISTS log_nodes (
  level SMALLINT NOT NULL CHECK (level >= 1),
  idx BIGINT NOT NULL CHECK (idx >= 0),
  hash BYTEA NOT NULL,
  PRIMARY KEY (level, idx)
);

CREATE TABLE IF NOT EXISTS checkpoints (
  id BIGSERIAL PRIMARY KEY,
  size BIGINT NOT NULL CHECK (size >= 0),
  note TEXT NOT NULL,
  created_at TEXT NOT NULL
);

-- Confidential training (src/kbs/train.ts). Each job's latest checkpoint, moved only by
-- compare-and-set (UPDATE … WHERE number = prev AND sha256 = prev), so a host cannot roll a job back.
CREATE TABLE IF NOT EXISTS train_checkpoints (
  job TEXT PRIMARY KEY CHECK (length(job) = 64),
  number BIGINT NOT NULL CHECK (number >= 1),
  sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
  updated_at TEXT NOT NULL
);

-- Training receipts by the SHA-256 of their Statement (the DSSE payload), one per job (the store
-- checks under its write lock); facts: JSON {subjects, trainer, outputs, tee}.
CREATE TABLE IF NOT EXISTS train_receipts (
  sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
  job TEXT NOT NULL,
  log_index BIGINT NOT NULL CHECK (log_index >= 0),
  recorded_at TEXT NOT NULL,
  facts TEXT NOT NULL,
  envelope BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS train_receipts_by_job ON train_receipts(job);

-- The kbs:/// URIs a receipt's outputs are sealed to: what a release decision looks receipts up by.
CREATE TABLE IF NOT EXISTS train_receipt_recipients (
  recipient TEXT NOT NULL,
  receipt TEXT NOT NULL REFERENCES train_receipts(sha256),
  PRIMARY KEY (recipient, receipt)
);
`;

/**
 * Version 1 stored the operator as in-band tenant names: `default` owned what admins created, `*` held
 * broker-wide policies and reference values. Both become NULL. Reference values of `default` stay as
 * they were (inert: no tenant can be named so any more, and no repository is owned by it) rather than
 * become operator-wide, which would let whoever added them deny every tenant's releases.
 */
export const POSTGRES_MIGRATE_1_TO_2 = `
ALTER TABLE repositories ALTER COLUMN tenant DROP NOT NULL;
ALTER TABLE resources ALTER COLUMN tenant DROP NOT NULL;
ALTER TABLE policies ALTER COLUMN tenant DROP NOT NULL;
ALTER TABLE reference_values ALTER COLUMN tenant DROP NOT NULL;
UPDATE repositories SET tenant = NULL WHERE tenant IN ('default', '*', '');
UPDATE resources SET tenant = NULL WHERE tenant IN ('default', '*', '');
UPDATE policies SET tenant = NULL WHERE tenant IN ('default', '*', '');
UPDATE reference_values SET tenant = NULL WHERE tenant IN ('*', '');
ALTER TABLE repositories ADD CHECK (tenant <> '');
ALTER TABLE resources ADD CHECK (tenant <> '');
ALTER TABLE policies ADD CHECK (tenant <> '');
ALTER TABLE reference_values ADD CHECK (tenant <> '');
`;
