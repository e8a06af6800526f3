/**
 * Log entries: what the key broker records for every release, refusal, policy change and key change.
 * An entry's canonical bytes are its RFC 8785 (JCS) form; its leaf hash is the RFC 6962 leaf hash of
 * those bytes; and each entry carries its predecessor's leaf hash in `prevHash`, so that the order can be
 * checked from the entries alone, without the tree.
 */
import { canonicalize, canonicalizeBytes, type JsonValue, toHex } from '../util/index.js';
import { TranslogError } from './errors.js';
import { leafHash } from './hash.js';

/**
 * What an entry records: a lower-case token (`KIND` below) chosen by the application that writes the
 * log. The library gives none of them a meaning; the key broker's kinds (`release`, `denial`,
 * `resource-put`, …) are listed in docs/transparency-log.md, which test/kbs/log-kinds.test.ts keeps
 * equal to what the broker writes.
 */
export type LogEntryKind = string;

export interface LogEntry {
  /** Position in the log, from 0. */
  index: number;
  /** When it happened, RFC 3339 (e.g. 2026-11-25T21:45:19.123Z). */
  time: string;
  kind: LogEntryKind;
  /** Tenant whose resources are concerned ('' when none). */
  tenant: string;
  /** Who acted: an admin identity, or the attested workload (e.g. its EAR subject). */
  actor: string;
  /** What it concerns, e.g. a resource URI kbs:///tenant/repo/key. */
  subject: string;
  /** Kind-specific facts (policy id, reason of a denial, digest of a new policy…): a JSON object. */
  details: { [key: string]: JsonValue };
  /** Lower-case hex of the previous entry's leaf hash; 64 zeros for entry 0. */
  prevHash: string;
}

/** What the caller supplies; the library assigns index and prevHash, and time if not given. */
export type LogEntryFields = Omit<LogEntry, 'index' | 'prevHash' | 'time'> & { time?: string };

export const ZERO_HASH_HEX = '0'.repeat(64);

const FIELDS = ['index', 'time', 'kind', 'tenant', 'actor', 'subject', 'details', 'prevHash'];
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const KIND = /^[a-z][a-z0-9-]{0,63}$/;

/** The bytes that are hashed: JCS of the entry. */
export function canonicalEntryBytes(entry: LogEntry): Uint8Array {
  return canonicalizeBytes(entry);
}

/** RFC 6962 leaf hash of the entry's canonical bytes. */
export function entryLeafHash(entry: LogEntry): Promise<Uint8Array> {
  return leafHash(canonicalEntryBytes(entry));
}

/**
 * Checks that `value` is a well-formed entry (exactly the fields above, RFC 3339 time, lower-case kind,
 * 64-hex prevHash, JSON-object details) and returns it typed. Unknown fields are refused: they would be
 * hashed, but no reader would know what they mean.
 */
export function parseEntry(value: unknown, where = 'entry'): LogEntry {
  const bad = (why: string, index?: number): never => {
    throw new TranslogError('bad-entry', `${where}: ${why}`, index === undefined ? {} : { entry: index });
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return bad('not a JSON object');
  const e = value as Record<string, unknown>;
  const index =
    typeof e.index === 'number' && Number.isSafeInteger(e.index) && e.index >= 0 ? e.index : undefined;
  if (index === undefined) return bad('index must be a non-negative integer');
  const extra = Object.keys(e).filter((k) => !FIELDS.includes(k));
  if (extra.length > 0) bad(`unknown field(s) ${extra.join(', ')}`, index);
  if (typeof e.time !== 'string' || !RFC3339.test(e.time) || Number.isNaN(Date.parse(e.time))) {
    bad('time must be an RFC 3339 date-time', index);
  }
  if (typeof e.kind !== 'string' || !KIND.test(e.kind)) bad('kind must be a lower-case name', index);
  for (const f of ['tenant', 'actor', 'subject'] as const) {
    if (typeof e[f] !== 'string') bad(`${f} must be a string`, index);
  }
  if (typeof e.details !== 'object' || e.details === null || Array.isArray(e.details)) {
    bad('details must be a JSON object', index);
  }
  if (typeof e.prevHash !== 'string' || !/^[0-9a-f]{64}$/.test(e.prevHash)) {
    bad('prevHash must be 64 lower-case hex digits', index);
  }
  try {
    canonicalizeBytes(e);
  } catch (err) {
    bad(`not canonicalisable JSON: ${(err as Error).message}`, index);
  }
  return e as unknown as LogEntry;
}

/** The last entry of a log, as `nextEntry` needs it: its index and leaf hash. */
export interface ChainHead {
  index: number;
  leafHash: Uint8Array;
}

/**
 * Builds the entry that follows `prev` (null for the first entry of a log) and its leaf hash. Pure: the
 * caller stores both (with `appendToRange`'s result) in the transaction that makes the change.
 */
export async function nextEntry(
  prev: ChainHead | null,
  fields: LogEntryFields,
): Promise<{ entry: LogEntry; leafHash: Uint8Array }> {
  const entry: LogEntry = {
    index: prev ? prev.index + 1 : 0,
    time: fields.time ?? new Date().toISOString(),
    kind: fields.kind,
    tenant: fields.tenant,
    actor: fields.actor,
    subject: fields.subject,
    details: fields.details,
    prevHash: prev ? toHex(prev.leafHash) : ZERO_HASH_HEX,
  };
  // Validate what will be stored forever (JCS refuses NaN, lone surrogates, non-plain objects), then keep
  // a deep copy in canonical form so that later changes to `fields` cannot alter a hashed entry.
  parseEntry(entry, `entry ${entry.index}`);
  const stored = JSON.parse(canonicalize(entry)) as LogEntry;
  return { entry: stored, leafHash: await entryLeafHash(stored) };
}
