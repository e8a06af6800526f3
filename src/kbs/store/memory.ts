/**
 * A store in process memory for unit tests and `memory:` URLs: the same rules as the SQL backends,
 * nothing persisted. Each mutation checks everything and builds its log entry before it changes any
 * state, so a failure (the builder throwing included) leaves no trace — the same all-or-nothing
 * outcome as a rolled-back transaction.
 */
import {
  buildEntry,
  checkCheckpointSize,
  checkRange,
  checkResourcePath,
  checkSize,
  completeNodes,
  isoTime,
  now,
  ownerConflict,
  ownerName,
  type StoreOptions,
  scopeColumns,
  scopeRepository,
} from './common.js';
import {
  type AdminTokenRevocation,
  type CheckpointAdvance,
  ConflictError,
  type KbsStore,
  type LogAppend,
  NotFoundError,
  type Owner,
  type PolicyRecord,
  type PolicyScope,
  type ReferenceValueRecord,
  type ReferenceValueSet,
  type ResourceMeta,
  type ResourceRecord,
  type SealedSecret,
  type SessionRecord,
  type StoredLogEntry,
  type TrainCheckpoint,
  type TrainReceiptFacts,
  type TrainReceiptRecord,
  withFrom,
} from './types.js';

const copySecret = (s: SealedSecret): SealedSecret => ({
  masterKeyId: s.masterKeyId,
  ciphertext: new Uint8Array(s.ciphertext),
});
const copyEntry = (e: StoredLogEntry): StoredLogEntry => ({
  index: e.index,
  canonical: new Uint8Array(e.canonical),
  leafHash: new Uint8Array(e.leafHash),
});

function meta(r: ResourceRecord): ResourceMeta {
  const { secret: _secret, ...m } = r;
  return { ...m };
}

const scopeKey = (scope: PolicyScope): string => {
  const { kind, target } = scopeColumns(scope);
  return `${kind}\u0000${target}`;
};

export class MemoryStore implements KbsStore {
  private readonly repositories = new Map<string, Owner>();
  private readonly revocations = new Map<string, AdminTokenRevocation>();
  private readonly resources = new Map<string, ResourceRecord>();
  private readonly policies = new Map<string, PolicyRecord[]>();
  private readonly references: ReferenceValueRecord[] = [];
  private readonly sessions = new Map<string, SessionRecord>();
  private readonly log: StoredLogEntry[] = [];
  /** Stored subtree hashes, `level/index`, and the compact range after the last entry. */
  private readonly nodes = new Map<string, Uint8Array>();
  private range: Uint8Array[] = [];
  private readonly saved: { size: number; note: string }[] = [];
  private readonly trainCheckpoints = new Map<string, TrainCheckpoint>();
  /** By the envelope's SHA-256, in the order recorded. */
  private readonly receipts = new Map<string, { record: TrainReceiptRecord; envelope: Uint8Array }>();
  private closed = false;

  constructor(private readonly opts: StoreOptions) {}

  async migrate(): Promise<void> {}

  async close(): Promise<void> {
    this.closed = true;
  }

  async ping(): Promise<void> {
    this.open();
  }

  private open(): void {
    if (this.closed) throw new Error('store is closed');
  }

  /** Appends a built entry with the subtrees it completes, as the SQL stores do in their transaction. */
  private push(e: StoredLogEntry): void {
    const { nodes, hashes } = completeNodes(this.log.length, this.range, [e.leafHash]);
    this.log.push(e);
    for (const n of nodes) this.nodes.set(`${n.level}/${n.idx}`, n.hash);
    this.range = hashes;
  }

  /** Builds the next entry; the caller applies its change and then `push`es the entry. */
  private entry(fields: LogAppend): StoredLogEntry {
    const prev = this.log.at(-1);
    return buildEntry(this.opts.buildLogEntry, this.log.length, prev?.leafHash, fields);
  }

  async createRepository(repository: string, tenant: Owner, log: LogAppend): Promise<void> {
    this.open();
    if (this.repositories.has(repository)) {
      const owner = this.repositories.get(repository)!;
      throw owner === tenant
        ? new ConflictError(`repository ${repository} already exists`)
        : ownerConflict(repository, owner, tenant);
    }
    const e = this.entry(log);
    this.repositories.set(repository, tenant);
    this.push(e);
  }

  async repositoryOwner(repository: string): Promise<{ tenant: Owner } | undefined> {
    this.open();
    return this.repositories.has(repository) ? { tenant: this.repositories.get(repository)! } : undefined;
  }

  async assignRepository(repository: string, tenant: Owner, log: LogAppend): Promise<{ from: Owner }> {
    this.open();
    if (!this.repositories.has(repository))
      throw new NotFoundError(`repository ${repository} does not exist`);
    const from = this.repositories.get(repository)!;
    if (from === tenant)
      throw new ConflictError(`repository ${repository} already belongs to ${ownerName(tenant)}`);
    const e = this.entry(withFrom(log, from));
    this.repositories.set(repository, tenant);
    for (const [path, r] of this.resources)
      if (r.repository === repository) this.resources.set(path, { ...r, tenant });
    for (const [key, history] of this.policies) {
      const first = history[0];
      if (first && scopeRepository(first.scope) === repository)
        this.policies.set(
          key,
          history.map((p) => ({ ...p, tenant })),
        );
    }
    this.push(e);
    return { from };
  }

  async putResource(
    rec: Omit<ResourceRecord, 'version' | 'createdAt' | 'updatedAt'>,
    log: LogAppend,
  ): Promise<ResourceMeta> {
    this.open();
    checkResourcePath(rec);
    checkSize(rec.size);
    if (!this.repositories.has(rec.repository))
      throw new NotFoundError(`repository ${rec.repository} does not exist; create it first`);
    const owner = this.repositories.get(rec.repository)!;
    if (owner !== rec.tenant) throw ownerConflict(rec.repository, owner, rec.tenant);
    if (this.resources.has(rec.path)) {
      throw new ConflictError(`resource ${rec.path} already exists; rotate it to store a new value`);
    }
    const t = now();
    const stored: ResourceRecord = {
      ...rec,
      secret: copySecret(rec.secret),
      version: 1,
      createdAt: t,
      updatedAt: t,
    };
    const e = this.entry(log);
    this.resources.set(rec.path, stored);
    this.push(e);
    return meta(stored);
  }

  async rotateResource(
    path: string,
    secret: SealedSecret,
    size: number,
    log: LogAppend,
  ): Promise<ResourceMeta> {
    this.open();
    checkSize(size);
    const cur = this.resources.get(path);
    if (!cur) throw new NotFoundError(`resource ${path} does not exist`);
    const next: ResourceRecord = {
      ...cur,
      secret: copySecret(secret),
      size,
      version: cur.version + 1,
      updatedAt: now(),
    };
    const e = this.entry(log);
    this.resources.set(path, next);
    this.push(e);
    return meta(next);
  }

  async deleteResource(path: string, log: LogAppend): Promise<boolean> {
    this.open();
    if (!this.resources.has(path)) return false;
    const e = this.entry(log);
    this.resources.delete(path);
    this.push(e);
    return true;
  }

  async getResource(path: string): Promise<ResourceRecord | undefined> {
    this.open();
    const r = this.resources.get(path);
    return r && { ...r, secret: copySecret(r.secret) };
  }

  async listResources(tenant?: string): Promise<ResourceMeta[]> {
    this.open();
    return [...this.resources.values()]
      .filter((r) => tenant === undefined || r.tenant === tenant)
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
      .map(meta);
  }

  async reencryptSecrets(
    fn: (rec: ResourceRecord) => Promise<SealedSecret>,
    log: LogAppend,
  ): Promise<number> {
    this.open();
    const before = [...this.resources.values()];
    const fresh = new Map<string, SealedSecret>();
    for (const r of before) fresh.set(r.path, copySecret(await fn({ ...r, secret: copySecret(r.secret) })));
    // The callback awaited, so another caller may have changed a resource meanwhile; a stale
    // re-encryption would silently bring back an old value.
    for (const r of before) {
      if (this.resources.get(r.path) !== r) {
        throw new ConflictError(`resource ${r.path} changed during re-encryption; run the rotation again`);
      }
    }
    if (this.resources.size !== before.length) {
      throw new ConflictError('resources were added during re-encryption; run the rotation again');
    }
    const e = this.entry(log);
    for (const r of before) this.resources.set(r.path, { ...r, secret: fresh.get(r.path)! });
    this.push(e);
    return before.length;
  }

  async setPolicy(rec: Omit<PolicyRecord, 'version' | 'createdAt'>, log: LogAppend): Promise<PolicyRecord> {
    this.open();
    const repository = scopeRepository(rec.scope);
    if (repository !== undefined) {
      if (!this.repositories.has(repository))
        throw new NotFoundError(`repository ${repository} does not exist; create it first`);
      const owner = this.repositories.get(repository)!;
      if (owner !== rec.tenant) throw ownerConflict(repository, owner, rec.tenant);
    }
    const key = scopeKey(rec.scope);
    const history = this.policies.get(key) ?? [];
    const stored: PolicyRecord = {
      scope: { ...rec.scope },
      tenant: rec.tenant,
      version: history.length + 1,
      source: rec.source,
      createdAt: now(),
      actor: rec.actor,
    };
    const e = this.entry(log);
    this.policies.set(key, [...history, stored]);
    this.push(e);
    return { ...stored, scope: { ...stored.scope } };
  }

  async getPolicy(scope: PolicyScope): Promise<PolicyRecord | undefined> {
    this.open();
    const p = this.policies.get(scopeKey(scope))?.at(-1);
    return p && { ...p, scope: { ...p.scope } };
  }

  async listPolicies(tenant?: string): Promise<PolicyRecord[]> {
    this.open();
    return [...this.policies.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .flatMap(([, h]) => h)
      .filter((p) => tenant === undefined || p.tenant === tenant)
      .map((p) => ({ ...p, scope: { ...p.scope } }));
  }

  async deletePolicy(scope: PolicyScope, log: LogAppend): Promise<number> {
    this.open();
    const key = scopeKey(scope);
    const n = this.policies.get(key)?.length ?? 0;
    if (n === 0) return 0;
    const e = this.entry(log);
    this.policies.delete(key);
    this.push(e);
    return n;
  }

  async addReferenceValue(
    rec: Omit<ReferenceValueRecord, 'id' | 'version' | 'createdAt'>,
    log: LogAppend,
  ): Promise<ReferenceValueRecord> {
    this.open();
    const expiresAt = rec.expiresAt === undefined ? undefined : isoTime(rec.expiresAt, 'expiresAt');
    const version =
      this.references.filter((r) => r.tenant === rec.tenant && r.tee === rec.tee && r.name === rec.name)
        .length + 1;
    const stored: ReferenceValueRecord = {
      id: crypto.randomUUID(),
      tenant: rec.tenant,
      tee: rec.tee,
      name: rec.name,
      values: [...rec.values],
      version,
      createdAt: now(),
      ...(expiresAt !== undefined && { expiresAt }),
      ...(rec.note !== undefined && { note: rec.note }),
    };
    const e = this.entry(log);
    this.references.push(stored);
    this.push(e);
    return { ...stored, values: [...stored.values] };
  }

  async listReferenceValues(filter?: { tenant?: Owner; tee?: string }): Promise<ReferenceValueRecord[]> {
    this.open();
    // The operator's (null) sort first, as NULLs do in the SQL backends.
    const key = (r: ReferenceValueRecord) => [r.tenant === null ? '' : `\u0001${r.tenant}`, r.tee, r.name];
    return this.references
      .filter(
        (r) =>
          (filter?.tenant === undefined || r.tenant === filter.tenant) &&
          (filter?.tee === undefined || r.tee === filter.tee),
      )
      .sort((a, b) => {
        const [ka, kb] = [key(a), key(b)];
        for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! < kb[i]! ? -1 : 1;
        return a.version - b.version;
      })
      .map((r) => ({ ...r, values: [...r.values] }));
  }

  async deleteReferenceValues(set: ReferenceValueSet, log: LogAppend): Promise<number> {
    this.open();
    const hit = (r: ReferenceValueRecord) =>
      r.tenant === set.tenant && r.tee === set.tee && r.name === set.name;
    const n = this.references.filter(hit).length;
    if (n === 0) return 0;
    const e = this.entry(log);
    const kept = this.references.filter((r) => !hit(r));
    this.references.splice(0, this.references.length, ...kept);
    this.push(e);
    return n;
  }

  async revokeAdminToken(
    rec: Omit<AdminTokenRevocation, 'revokedAt'>,
    log: LogAppend,
  ): Promise<AdminTokenRevocation> {
    this.open();
    if (this.revocations.has(rec.tokenId))
      throw new ConflictError(`admin token ${rec.tokenId} is already revoked`);
    const expiresAt = rec.expiresAt === undefined ? undefined : isoTime(rec.expiresAt, 'expiresAt');
    const stored: AdminTokenRevocation = {
      tokenId: rec.tokenId,
      ...(expiresAt !== undefined && { expiresAt }),
      revokedAt: now(),
      actor: rec.actor,
      ...(rec.reason !== undefined && { reason: rec.reason }),
    };
    const e = this.entry(log);
    this.revocations.set(rec.tokenId, stored);
    this.log.push(e);
    return { ...stored };
  }

  async isAdminTokenRevoked(tokenId: string): Promise<boolean> {
    this.open();
    return this.revocations.has(tokenId);
  }

  async listAdminTokenRevocations(): Promise<AdminTokenRevocation[]> {
    this.open();
    return [...this.revocations.values()]
      .sort((a, b) =>
        a.revokedAt !== b.revokedAt
          ? a.revokedAt < b.revokedAt
            ? -1
            : 1
          : a.tokenId < b.tokenId
            ? -1
            : a.tokenId > b.tokenId
              ? 1
              : 0,
      )
      .map((r) => ({ ...r }));
  }

  async createSession(s: SessionRecord): Promise<void> {
    this.open();
    if (this.sessions.has(s.id)) throw new ConflictError(`session ${s.id} already exists`);
    this.sessions.set(s.id, { ...s, expiresAt: isoTime(s.expiresAt, 'expiresAt') });
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    this.open();
    const s = this.sessions.get(id);
    return s && { ...s };
  }

  async markAttested(id: string, token: string, teePubkey: string): Promise<boolean> {
    this.open();
    const s = this.sessions.get(id);
    if (s?.status !== 'challenged') return false;
    this.sessions.set(id, { ...s, status: 'attested', token, teePubkey });
    return true;
  }

  async deleteExpiredSessions(at: string): Promise<number> {
    this.open();
    const t = isoTime(at, 'now');
    let n = 0;
    for (const [id, s] of this.sessions) {
      if (s.expiresAt < t) {
        this.sessions.delete(id);
        n++;
      }
    }
    return n;
  }

  async trainCheckpoint(job: string): Promise<TrainCheckpoint | undefined> {
    this.open();
    const c = this.trainCheckpoints.get(job);
    return c && { ...c };
  }

  async advanceTrainCheckpoint(
    job: string,
    prev: TrainCheckpoint | null,
    next: TrainCheckpoint,
    log: LogAppend,
  ): Promise<CheckpointAdvance> {
    this.open();
    const held = this.trainCheckpoints.get(job);
    const matches =
      prev === null ? held === undefined : held?.number === prev.number && held.sha256 === prev.sha256;
    if (!matches) return { advanced: false, held: held && { ...held } };
    const e = this.entry(log);
    this.trainCheckpoints.set(job, { number: next.number, sha256: next.sha256 });
    this.push(e);
    return { advanced: true };
  }

  async addTrainReceipt(
    facts: TrainReceiptFacts,
    envelope: Uint8Array,
    log: LogAppend,
  ): Promise<{ record: TrainReceiptRecord; created: boolean }> {
    this.open();
    const known = this.receiptOfJob(facts.job);
    if (known) return { record: structuredClone(known), created: false };
    const e = this.entry(log);
    const record: TrainReceiptRecord = { ...structuredClone(facts), logIndex: e.index, recordedAt: now() };
    this.receipts.set(facts.sha256, { record, envelope: new Uint8Array(envelope) });
    this.push(e);
    return { record: structuredClone(record), created: true };
  }

  async trainReceiptsFor(recipient: string, limit: number): Promise<TrainReceiptRecord[]> {
    this.open();
    return [...this.receipts.values()]
      .map((r) => r.record)
      .filter((r) => r.outputs.some((o) => o.recipients.includes(recipient)))
      .sort((a, b) => b.logIndex - a.logIndex)
      .slice(0, limit)
      .map((r) => structuredClone(r));
  }

  private receiptOfJob(job: string): TrainReceiptRecord | undefined {
    let first: TrainReceiptRecord | undefined;
    for (const { record } of this.receipts.values())
      if (record.job === job && (!first || record.logIndex < first.logIndex)) first = record;
    return first;
  }

  async trainReceiptOfJob(job: string): Promise<TrainReceiptRecord | undefined> {
    this.open();
    const r = this.receiptOfJob(job);
    return r && structuredClone(r);
  }

  async trainReceipt(
    sha256: string,
  ): Promise<{ record: TrainReceiptRecord; envelope: Uint8Array } | undefined> {
    this.open();
    const r = this.receipts.get(sha256);
    return r && { record: structuredClone(r.record), envelope: new Uint8Array(r.envelope) };
  }

  async appendLog(log: LogAppend): Promise<StoredLogEntry> {
    this.open();
    const e = this.entry(log);
    this.push(e);
    return copyEntry(e);
  }

  async logSize(): Promise<number> {
    this.open();
    return this.log.length;
  }

  async logEntries(from: number, to: number): Promise<StoredLogEntry[]> {
    this.open();
    checkRange(from, to);
    return this.log.slice(from, to).map(copyEntry);
  }

  async logNodes(ids: readonly { level: number; index: number }[]): Promise<(Uint8Array | undefined)[]> {
    this.open();
    return ids.map(({ level, index }) => {
      const h = this.nodes.get(`${level}/${index}`);
      return h && new Uint8Array(h);
    });
  }

  async saveCheckpoint(size: number, note: string): Promise<void> {
    this.open();
    checkCheckpointSize(size, this.log.length);
    this.saved.push({ size, note });
  }

  async latestCheckpoint(): Promise<{ size: number; note: string } | undefined> {
    this.open();
    const all = await this.checkpoints();
    return all.at(-1);
  }

  async checkpoints(): Promise<{ size: number; note: string }[]> {
    this.open();
    // Stable sort: checkpoints of equal size stay in the order they were saved.
    return [...this.saved].sort((a, b) => a.size - b.size).map((c) => ({ ...c }));
  }
}
