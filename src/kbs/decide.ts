/**
 * Release decisions: which policy applies to a resource (its own, else its repository's, else the
 * broker-wide one, else the built-in secure default), the tenant's reference values, and what the CEL
 * policy says about the attestation result. Reasons are for the owner's audit log only.
 */
import type { EarResult, TeeKind } from '../attest/index.js';
import {
  activeReferenceValues,
  DEFAULT_RESOURCE_POLICY,
  evaluatesOnMainThread,
  INPUT_LIMITS,
  PolicyCache,
  policyInputFromEar,
  type ReferenceValue,
} from '../policy/index.js';
import { DEFAULT_CONFIG } from './config.js';
import { initDataOfEar } from './init-data.js';
import { PolicyPool } from './policy-pool.js';
import { runPolicy } from './policy-run.js';
import { scopeName } from './scope.js';
import type { KbsStore, Owner, PolicyRecord, ReferenceValueRecord } from './store/types.js';
import { repositoryNamespace } from './tenancy.js';
import { policyReceipts } from './train.js';

export interface ReleaseDecision {
  allow: boolean;
  /** Every reason, for the owner's audit log; never sent to the requester. */
  reasons: string[];
  /** Which policy decided: `resource:…`, `repository:…`, `default` or `built-in`. */
  policyScope: string;
  /** Per top-level clause of the policy: its source and outcome (only with `explainClauses`). */
  clauses?: { source: string; outcome: string; error?: string }[];
}

export interface ReleaseContext {
  store: KbsStore;
  ear: EarResult;
  /** `tenant`: the repository's owner, null for the operator. */
  resource: { path: string; repository: string; type: string; tag: string; tenant: Owner };
  devMode: boolean;
  now: Date;
  explainClauses?: boolean;
  /**
   * Policies see no receipts: whether a training TEE may record a receipt naming this resource is
   * judged by what it could get without one (TrainLedger.appendReceipt), so that no receipt can
   * vouch for the TEE that records the next.
   */
  withoutReceipts?: boolean;
  /**
   * Where policies too costly for the event loop are evaluated (the broker's, with its configured
   * time limit); without one, a pool shared by the process with the default limit.
   */
  policyPool?: PolicyPool;
}

const cache = new PolicyCache();
let sharedPool: PolicyPool | undefined;

/** The context's pool, else one shared by the process (started lazily, with the default limit). */
function poolOf(ctx: ReleaseContext): PolicyPool {
  if (ctx.policyPool) return ctx.policyPool;
  sharedPool ??= new PolicyPool({ timeLimitMs: DEFAULT_CONFIG.policyTimeLimitMs });
  return sharedPool;
}

async function policyFor(store: KbsStore, r: ReleaseContext['resource']): Promise<PolicyRecord | undefined> {
  return (
    (await store.getPolicy({ kind: 'resource', path: r.path })) ??
    (await store.getPolicy({ kind: 'repository', repository: r.repository })) ??
    (await store.getPolicy({ kind: 'default' }))
  );
}

/** `group` replaces the owner: activeReferenceValues selects by it, and null is no tenant name. */
function toReferenceValue(r: ReferenceValueRecord, group: string): ReferenceValue {
  return {
    ...r,
    tenant: group,
    tee: r.tee as TeeKind,
    createdAt: new Date(r.createdAt),
    ...(r.expiresAt ? { expiresAt: new Date(r.expiresAt) } : {}),
  } as ReferenceValue;
}

/**
 * The operator's (operator-wide) and the tenant's reference values, applied to each submodule of the same TEE kind:
 * a claim that is missing or not among the values denies; an expired name accepts nothing (fails closed).
 */
async function referenceValueReasons(ctx: ReleaseContext): Promise<string[]> {
  const owners: Owner[] = ctx.resource.tenant === null ? [null] : [null, ctx.resource.tenant];
  const groups = owners.map((_, i) => String(i));
  const all = (await Promise.all(owners.map((tenant) => ctx.store.listReferenceValues({ tenant })))).flatMap(
    (records, i) => records.map((r) => toReferenceValue(r, groups[i]!)),
  );
  if (all.length === 0) return [];
  const reasons: string[] = [];
  for (const [name, sub] of Object.entries(ctx.ear.submods)) {
    if (!sub.kind) continue;
    const active = groups.flatMap((group) =>
      Object.entries(activeReferenceValues(all, { tee: sub.kind!, tenant: group, at: ctx.now })),
    );
    for (const [claim, values] of active) {
      const got = sub.claims[claim];
      if (values.length === 0)
        reasons.push(`${name}: reference value ${sub.kind}/${claim} has expired or was revoked`);
      else if (typeof got !== 'string')
        reasons.push(
          `${name}: claim ${claim} is missing, so reference value ${sub.kind}/${claim} cannot match`,
        );
      else if (!values.includes(got.toLowerCase()))
        reasons.push(`${name}: ${claim} ${got} is not a reference value for ${sub.kind}/${claim}`);
    }
  }
  return reasons;
}

/** A costly evaluation waits in its repository's tenant's share of the policy queue ('' operator). */
function queueShare(repository: string): string {
  const ns = repositoryNamespace(repository);
  return ns.kind === 'tenant' ? ns.tenant : '';
}

export async function decideRelease(ctx: ReleaseContext): Promise<ReleaseDecision> {
  const record = await policyFor(ctx.store, ctx.resource);
  const policyScope = record ? scopeName(record.scope) : 'built-in';
  const policy = cache.get(record?.source ?? DEFAULT_RESOURCE_POLICY);
  const r = ctx.resource;
  const uri = `kbs:///${r.path}`;
  const initData = initDataOfEar(ctx.ear);
  // Receipts are looked up only for a policy that reads them (most do not): one query less per release.
  const receipts =
    policy.names.has('receipts') && ctx.withoutReceipts !== true
      ? policyReceipts(await ctx.store.trainReceiptsFor(uri, INPUT_LIMITS.maxReceipts), uri)
      : [];
  const input = policyInputFromEar(ctx.ear, {
    resource: { uri, repository: r.repository, type: r.type, tag: r.tag },
    // Policies see '' for the operator's repositories: no tenant is named so.
    tenant: r.tenant ?? '',
    ...(initData ? { init_data: initData } : {}),
    now: ctx.now,
    devMode: ctx.devMode,
    receipts,
  });
  const explainClauses = ctx.explainClauses === true;
  // A policy whose worst case (CEL errors included) fits a few ms runs here; a costlier one on a
  // policy worker under a time limit, so that it cannot hold the event loop for other tenants.
  const run = evaluatesOnMainThread(policy)
    ? runPolicy(policy, input, explainClauses)
    : await poolOf(ctx).evaluate(policy.source, input, explainClauses, queueShare(r.repository));
  const { decision } = run;
  const reasons = [...decision.reasons, ...(await referenceValueReasons(ctx))];
  const out: ReleaseDecision = { allow: decision.allow && reasons.length === 0, reasons, policyScope };
  if (explainClauses) {
    // A policy cut off by its time limit has no clause outcomes: the reason says why.
    out.clauses = (run.conjuncts ?? []).map((c) => ({
      source: c.source,
      outcome: c.outcome,
      ...(c.error ? { error: c.error } : {}),
    }));
  }
  return out;
}
