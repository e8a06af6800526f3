/**
 * Reference values: the measurements an owner accepts (e.g. a TDX `mr_td`, an SNP `measurement`),
 * stored per tenant and TEE kind, versioned and optionally expiring, and turned into the
 * `AppraisalPolicy.referenceValues` that verifiers judge evidence against.
 *
 * Each (tenant, tee, name) has a history of versions 1, 2, 3, …; a new version replaces the previous
 * one as a whole. When the newest version has expired, the name maps to an empty list, so every
 * measurement is refused (contraindicated) — expiry never silently turns a judged measurement into an
 * unjudged one.
 */
import { type AppraisalPolicy, TEE_KINDS, type TeeKind } from '../attest/types.js';

export { TEE_KINDS };

export const REFERENCE_VALUE_LIMITS = Object.freeze({
  maxValues: 1024,
  /** Hex characters per value (512 bytes). */
  maxValueLength: 1024,
  maxNoteLength: 1024,
  maxTenantLength: 128,
});

export interface ReferenceValue {
  id: string;
  /** The claim judged, as the verifier names it: "mr_td", "measurement", "mr_enclave", … */
  name: string;
  /** Acceptable values, lower-case hex. Empty: nothing is acceptable (a revocation). */
  values: string[];
  tee: TeeKind;
  /** 1 for the first value of (tenant, tee, name), then one more per change. */
  version: number;
  createdAt: Date;
  /** From this instant on, the version is expired and the name accepts nothing. */
  expiresAt?: Date;
  tenant: string;
  note?: string;
}

/** What an administrator submits; the store assigns id, version and createdAt. */
export interface ReferenceValueInput {
  name: string;
  values: string[];
  tee: TeeKind;
  tenant: string;
  expiresAt?: Date;
  note?: string;
}

export type ReferenceValueErrorCode =
  | 'refvalue-malformed'
  | 'refvalue-bad-name'
  | 'refvalue-bad-value'
  | 'refvalue-bad-tee'
  | 'refvalue-bad-tenant'
  | 'refvalue-bad-expiry'
  | 'refvalue-bad-note';

export class ReferenceValueError extends Error {
  override name = 'ReferenceValueError';
  constructor(
    readonly code: ReferenceValueErrorCode,
    /** The input field at fault. */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const HEX = /^(?:[0-9a-f]{2})+$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
const CONTROL = /[\u0000-\u001f\u007f]/;
const FIELDS = new Set(['name', 'values', 'tee', 'tenant', 'expiresAt', 'note']);

function fail(code: ReferenceValueErrorCode, field: string, message: string): never {
  throw new ReferenceValueError(code, field, message);
}

/**
 * Checks and normalises administrator input: a known TEE kind, a claim name, hex values (lower-cased,
 * duplicates removed), an expiry after `now`. Unknown fields are refused, so a typo cannot loosen the
 * intended policy. Throws ReferenceValueError naming the field.
 */
export function validateReferenceValueInput(input: unknown, now: Date): ReferenceValueInput {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    fail('refvalue-malformed', '', 'a reference value must be an object');
  }
  const v = input as Record<string, unknown>;
  for (const k of Object.keys(v)) {
    if (!FIELDS.has(k)) fail('refvalue-malformed', k, `unknown field "${k}"`);
  }
  const { name, values, tee, tenant, expiresAt, note } = v;
  if (typeof name !== 'string' || !NAME.test(name)) {
    fail('refvalue-bad-name', 'name', 'name must be a claim name: letters, digits, _ . : -, at most 64');
  }
  if (typeof tee !== 'string' || !(TEE_KINDS as readonly string[]).includes(tee)) {
    fail('refvalue-bad-tee', 'tee', `tee must be one of ${TEE_KINDS.join(', ')}`);
  }
  if (
    typeof tenant !== 'string' ||
    tenant === '' ||
    tenant.length > REFERENCE_VALUE_LIMITS.maxTenantLength ||
    CONTROL.test(tenant)
  ) {
    fail(
      'refvalue-bad-tenant',
      'tenant',
      `tenant must be 1..${REFERENCE_VALUE_LIMITS.maxTenantLength} characters without control characters`,
    );
  }
  if (!Array.isArray(values)) fail('refvalue-malformed', 'values', 'values must be a list of hex strings');
  if (values.length > REFERENCE_VALUE_LIMITS.maxValues) {
    fail('refvalue-bad-value', 'values', `at most ${REFERENCE_VALUE_LIMITS.maxValues} values`);
  }
  const normalised: string[] = [];
  values.forEach((x, i) => {
    const hex = typeof x === 'string' ? x.toLowerCase() : undefined;
    if (hex === undefined || !HEX.test(hex) || hex.length > REFERENCE_VALUE_LIMITS.maxValueLength) {
      fail(
        'refvalue-bad-value',
        `values[${i}]`,
        `values[${i}] must be hex with an even number of digits, at most ${REFERENCE_VALUE_LIMITS.maxValueLength}`,
      );
    }
    if (!normalised.includes(hex)) normalised.push(hex);
  });
  if (expiresAt !== undefined) {
    if (!(expiresAt instanceof Date) || Number.isNaN(expiresAt.getTime())) {
      fail('refvalue-bad-expiry', 'expiresAt', 'expiresAt must be a valid Date');
    }
    if (expiresAt.getTime() <= now.getTime()) {
      fail('refvalue-bad-expiry', 'expiresAt', `expiresAt ${expiresAt.toISOString()} is not in the future`);
    }
  }
  if (
    note !== undefined &&
    (typeof note !== 'string' || note.length > REFERENCE_VALUE_LIMITS.maxNoteLength)
  ) {
    fail(
      'refvalue-bad-note',
      'note',
      `note must be a string of at most ${REFERENCE_VALUE_LIMITS.maxNoteLength}`,
    );
  }
  return {
    name,
    values: normalised,
    tee: tee as TeeKind,
    tenant,
    ...(expiresAt !== undefined ? { expiresAt: expiresAt as Date } : {}),
    ...(note !== undefined ? { note: note as string } : {}),
  };
}

export interface ActiveQuery {
  tee: TeeKind;
  tenant: string;
  /** The appraisal time: versions created after it do not exist yet; versions expired by it accept nothing. */
  at: Date;
}

/**
 * The reference values in force for one tenant and TEE kind at `at`: for each name, the newest
 * version created at or before `at`; an expired newest version gives an empty list (refuse all).
 * Versions of other tenants or kinds are never considered.
 */
export function activeReferenceValues(
  all: readonly ReferenceValue[],
  q: ActiveQuery,
): NonNullable<AppraisalPolicy['referenceValues']> {
  const at = q.at.getTime();
  const newest = new Map<string, ReferenceValue>();
  for (const r of all) {
    if (r.tenant !== q.tenant || r.tee !== q.tee || r.createdAt.getTime() > at) continue;
    const seen = newest.get(r.name);
    if (seen === undefined || r.version > seen.version) newest.set(r.name, r);
  }
  const out: Record<string, string[]> = {};
  for (const [name, r] of [...newest].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const expired = r.expiresAt !== undefined && r.expiresAt.getTime() <= at;
    out[name] = expired ? [] : [...r.values];
  }
  return out;
}

export interface ListQuery {
  tenant: string;
  tee?: TeeKind;
  /** Every version instead of only the newest of each name. */
  allVersions?: boolean;
}

export interface HistoryQuery {
  tenant: string;
  tee: TeeKind;
  name: string;
}

/**
 * Where reference values live (memory here; SQLite and PostgreSQL in the key broker). Implementations
 * must pass test/policy/refvalue-conformance.ts: versions are consecutive per (tenant, tee, name) even
 * under concurrent adds, nothing is ever changed or deleted, and a tenant never sees another's values.
 */
export interface ReferenceValueStore {
  /** Validates (validateReferenceValueInput) and stores the next version; returns it. */
  add(input: ReferenceValueInput): Promise<ReferenceValue>;
  /** Newest version of each (tee, name) — or every version — ordered by tee, name, version. */
  list(query: ListQuery): Promise<ReferenceValue[]>;
  /** Every version of one name, oldest first. */
  history(query: HistoryQuery): Promise<ReferenceValue[]>;
  /** One version by id, only within its tenant. */
  get(tenant: string, id: string): Promise<ReferenceValue | undefined>;
}

/** The AppraisalPolicy.referenceValues a verifier should use for this tenant, kind and time. */
export async function referenceValuesFor(
  store: ReferenceValueStore,
  q: ActiveQuery,
): Promise<NonNullable<AppraisalPolicy['referenceValues']>> {
  return activeReferenceValues(await store.list({ tenant: q.tenant, tee: q.tee, allVersions: true }), q);
}

function compareRecords(a: ReferenceValue, b: ReferenceValue): number {
  if (a.tee !== b.tee) return a.tee < b.tee ? -1 : 1;
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  return a.version - b.version;
}

function copy(r: ReferenceValue): ReferenceValue {
  return {
    ...r,
    values: [...r.values],
    createdAt: new Date(r.createdAt),
    ...(r.expiresAt ? { expiresAt: new Date(r.expiresAt) } : {}),
  };
}

export interface MemoryStoreOptions {
  /** Clock for createdAt and expiry validation; default the system clock. */
  now?: () => Date;
}

/** An in-memory store, for tests, demos and the single-process development broker. */
export class MemoryReferenceValueStore implements ReferenceValueStore {
  readonly #records: ReferenceValue[] = [];
  readonly #now: () => Date;

  constructor(options: MemoryStoreOptions = {}) {
    this.#now = options.now ?? (() => new Date());
  }

  async add(input: ReferenceValueInput): Promise<ReferenceValue> {
    const createdAt = this.#now();
    const v = validateReferenceValueInput(input, createdAt);
    // No await between reading the last version and pushing the next: adds cannot interleave.
    const previous = this.#records.filter(
      (r) => r.tenant === v.tenant && r.tee === v.tee && r.name === v.name,
    );
    const record: ReferenceValue = {
      id: crypto.randomUUID(),
      ...v,
      version: previous.length + 1,
      createdAt,
    };
    this.#records.push(record);
    return copy(record);
  }

  async list(query: ListQuery): Promise<ReferenceValue[]> {
    const mine = this.#records.filter(
      (r) => r.tenant === query.tenant && (query.tee === undefined || r.tee === query.tee),
    );
    const chosen = query.allVersions
      ? mine
      : mine.filter((r) => !mine.some((o) => o.tee === r.tee && o.name === r.name && o.version > r.version));
    return chosen.map(copy).sort(compareRecords);
  }

  async history(query: HistoryQuery): Promise<ReferenceValue[]> {
    return this.#records
      .filter((r) => r.tenant === query.tenant && r.tee === query.tee && r.name === query.name)
      .map(copy)
      .sort(compareRecords);
  }

  async get(tenant: string, id: string): Promise<ReferenceValue | undefined> {
    const r = this.#records.find((x) => x.id === id && x.tenant === tenant);
    return r === undefined ? undefined : copy(r);
  }
}
