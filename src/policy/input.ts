/**
 * The policy input document: what a resource policy can see about the requester. Built from a
 * verified EAR (`policyInputFromEar`) plus the request context, then converted into the typed CEL
 * activation. The conversion validates every field, so bad data becomes a denial with a reason.
 */

import type { EarResult, EarSubmod, TrustVector } from '../attest/index.js';
import {
  CelReceipt,
  CelReceiptOutput,
  CelReceiptTee,
  CelResource,
  CelSubmod,
  CelTrainer,
} from './compile.js';
import { INPUT_LIMITS } from './input-limits.js';

export { INPUT_LIMITS };

/** AR4SI trust-vector claims, as `submod.trust.<name>` (0 when the verifier made no claim). */
export const TRUST_CLAIMS: readonly (keyof TrustVector)[] = [
  'instance_identity',
  'configuration',
  'executables',
  'file_system',
  'hardware',
  'runtime_opaque',
  'storage_opaque',
  'sourced_data',
];

export interface PolicySubmod {
  status: string;
  /** AR4SI claims by name (instance_identity, configuration, …). */
  trust: Partial<Record<string, number>>;
  /** Annotated evidence (JSON). */
  claims: Record<string, unknown>;
  kind: string;
  insecure: boolean;
  reasons: { check: string; status: string; message: string }[];
}

export interface PolicyResource {
  uri: string;
  repository: string;
  type: string;
  tag: string;
}

/**
 * A training receipt the key broker recorded whose outputs are sealed to the requested resource
 * (docs/policy.md, `receipts`). `trainer.name` and `trainer.digest` are '' when the receipt names none.
 */
export interface PolicyReceipt {
  /** The training job: lower-case hex SHA-256 of its manifest. */
  job: string;
  /** Lower-case hex SHA-256 of the receipt's Statement (its DSSE payload). */
  sha256: string;
  trainer: { kind: string; name: string; digest: string };
  /** The receipt's outputs sealed to the requested resource. */
  outputs: { file: string; sha256: string }[];
  /**
   * The TEE of the attested session that appended it, from its attestation result; `measurement`:
   * its launch measurement, lower-case hex ('' when the kind has none).
   */
  tee: { kind: string; insecure: boolean; status: string; measurement: string };
  recorded_at: Date;
}

/** The input document of a resource policy (docs/policy.md describes every field). */
export interface PolicyInput {
  submods: Record<string, PolicySubmod>;
  resource: PolicyResource;
  tenant: string;
  /** Optional init data (e.g. the CoCo initdata TOML, as JSON). */
  init_data?: Record<string, unknown>;
  now: Date;
  dev_mode: boolean;
  /** Training receipts naming the resource as a recipient, newest first; none when absent. */
  receipts?: PolicyReceipt[];
}

export interface PolicyContext {
  resource: PolicyResource;
  tenant: string;
  init_data?: Record<string, unknown>;
  receipts?: PolicyReceipt[];
  /** Default: now. */
  now?: Date;
  /** Operator's development mode: lets the default policy accept the insecure `sample` TEE. */
  devMode?: boolean;
}

function submodFromEar(s: EarSubmod): PolicySubmod {
  return {
    status: s.status,
    trust: { ...s.trustVector },
    claims: s.claims,
    kind: s.kind ?? '',
    insecure: s.insecure,
    reasons: s.reasons.map(({ check, status, message }) => ({ check, status, message })),
  };
}

/** The policy input for a verified EAR and the request it came with. */
export function policyInputFromEar(ear: EarResult, ctx: PolicyContext): PolicyInput {
  const submods: Record<string, PolicySubmod> = {};
  for (const [name, s] of Object.entries(ear.submods)) submods[name] = submodFromEar(s);
  return {
    submods,
    resource: { ...ctx.resource },
    tenant: ctx.tenant,
    ...(ctx.init_data !== undefined ? { init_data: ctx.init_data } : {}),
    now: ctx.now ?? new Date(),
    dev_mode: ctx.devMode === true,
    ...(ctx.receipts !== undefined ? { receipts: ctx.receipts } : {}),
  };
}

/** Bad input data; becomes a denial reason, never an exception out of evaluatePolicy. */
export class PolicyInputError extends Error {
  override name = 'PolicyInputError';
}

function bad(message: string): never {
  throw new PolicyInputError(message);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function str(v: unknown, where: string): string {
  if (typeof v !== 'string') bad(`${where} must be a string, got ${describe(v)}`);
  if (v.length > INPUT_LIMITS.maxStringLength) bad(`${where} is longer than ${INPUT_LIMITS.maxStringLength}`);
  return v;
}

/**
 * What the input may still hold: values in claims, reasons and init data (INPUT_LIMITS.maxValues), and
 * characters in those and in the submodules' names, statuses and kinds (maxStringChars).
 */
interface Budget {
  left: number;
  chars: number;
}

/** A string of the submodules or init data, counted against the budget of characters they share. */
function counted(v: unknown, where: string, budget: Budget): string {
  const s = str(v, where);
  budget.chars -= s.length;
  if (budget.chars < 0) {
    bad(`submodules and init data hold more than ${INPUT_LIMITS.maxStringChars} characters`);
  }
  return s;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v;
}

/**
 * Copies a JSON-like value into what CEL expects: null-prototype maps, lists, strings, booleans,
 * numbers (doubles), bytes, timestamps. `undefined` members are dropped as JSON would.
 */
function jsonValue(v: unknown, where: string, budget: Budget, depth: number): unknown {
  if (--budget.left < 0) bad(`claims, reasons and init data hold more than ${INPUT_LIMITS.maxValues} values`);
  if (depth > INPUT_LIMITS.maxDepth) bad(`${where} is nested deeper than ${INPUT_LIMITS.maxDepth}`);
  if (v === null || typeof v === 'boolean') return v;
  if (typeof v === 'string') return counted(v, where, budget);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) bad(`${where} is not a finite number`);
    return v;
  }
  if (typeof v === 'bigint') return v;
  if (v instanceof Uint8Array) return v;
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) bad(`${where} is an invalid date`);
    return v;
  }
  if (Array.isArray(v)) {
    const out: unknown[] = [];
    for (let i = 0; i < v.length; i++) {
      if (v[i] === undefined) bad(`${where}[${i}] is undefined`);
      out.push(jsonValue(v[i], `${where}[${i}]`, budget, depth + 1));
    }
    return out;
  }
  if (isRecord(v)) {
    const out: Record<string, unknown> = Object.create(null);
    for (const [k, x] of Object.entries(v)) {
      // A policy can walk keys too (`claims.all(k, …)`, `k in claims`).
      if (x !== undefined)
        out[counted(k, `a key of ${where}`, budget)] = jsonValue(x, `${where}.${k}`, budget, depth + 1);
    }
    return out;
  }
  return bad(`${where} has a value of type ${typeof v}, which is not JSON`);
}

function jsonMap(v: unknown, where: string, budget: Budget): Record<string, unknown> {
  if (v === undefined) return Object.create(null);
  if (!isRecord(v)) bad(`${where} must be a map, got ${describe(v)}`);
  return jsonValue(v, where, budget, 0) as Record<string, unknown>;
}

function toSubmod(name: string, v: unknown, budget: Budget): CelSubmod {
  const where = `submods.${name}`;
  if (!isRecord(v)) bad(`${where} must be a map, got ${describe(v)}`);
  const trustIn = v.trust ?? {};
  if (!isRecord(trustIn)) bad(`${where}.trust must be a map`);
  const trust = new Map<string, bigint>();
  for (const claim of TRUST_CLAIMS) {
    const x = trustIn[claim] ?? 0;
    if (!Number.isInteger(x) || (x as number) < -128 || (x as number) > 127) {
      bad(`${where}.trust.${claim} must be an integer in -128..127`);
    }
    trust.set(claim, BigInt(x as number));
  }
  const reasonsIn = v.reasons ?? [];
  if (!Array.isArray(reasonsIn)) bad(`${where}.reasons must be a list`);
  const reasons = reasonsIn.map((r, i) => {
    // Reasons count against the same budget as claims: policies can walk them too.
    budget.left -= 4;
    if (budget.left < 0) bad(`claims, reasons and init data hold more than ${INPUT_LIMITS.maxValues} values`);
    if (!isRecord(r)) bad(`${where}.reasons[${i}] must be a map`);
    return {
      check: counted(r.check, `${where}.reasons[${i}].check`, budget),
      status: counted(r.status, `${where}.reasons[${i}].status`, budget),
      message: counted(r.message, `${where}.reasons[${i}].message`, budget),
    };
  });
  if (typeof v.insecure !== 'boolean') bad(`${where}.insecure must be a boolean`);
  // The name, status and kind count too: a walk over the submodules sums them (cost.ts). The name
  // counts twice: it is both a key of `submods` and the submodule's `name`.
  for (let copy = 0; copy < 2; copy++) counted(name, `the name of ${where}`, budget);
  const kind = counted(v.kind, `${where}.kind`, budget);
  return new CelSubmod(
    name,
    counted(v.status, `${where}.status`, budget),
    trust,
    jsonMap(v.claims, `${where}.claims`, budget),
    kind,
    // The sample TEE is insecure whatever the input says: its kind alone is enough to know.
    v.insecure || kind === 'sample',
    reasons,
  );
}

/** A string of a receipt, within INPUT_LIMITS.maxReceiptString (receipts have bounds of their own). */
function receiptString(v: unknown, where: string): string {
  if (typeof v !== 'string') bad(`${where} must be a string, got ${describe(v)}`);
  if (v.length > INPUT_LIMITS.maxReceiptString)
    bad(`${where} is longer than ${INPUT_LIMITS.maxReceiptString}`);
  return v;
}

function toReceipt(v: unknown, i: number): CelReceipt {
  const where = `receipts[${i}]`;
  if (!isRecord(v)) bad(`${where} must be a map, got ${describe(v)}`);
  const { trainer, tee, outputs } = v;
  if (!isRecord(trainer)) bad(`${where}.trainer must be a map`);
  if (!isRecord(tee)) bad(`${where}.tee must be a map`);
  if (!Array.isArray(outputs)) bad(`${where}.outputs must be a list`);
  if (outputs.length > INPUT_LIMITS.maxReceiptOutputs)
    bad(`${where} has more than ${INPUT_LIMITS.maxReceiptOutputs} outputs`);
  if (typeof tee.insecure !== 'boolean') bad(`${where}.tee.insecure must be a boolean`);
  const at = v.recorded_at;
  if (!(at instanceof Date) || Number.isNaN(at.getTime())) bad(`${where}.recorded_at must be a valid Date`);
  const kind = receiptString(tee.kind, `${where}.tee.kind`);
  return new CelReceipt(
    receiptString(v.job, `${where}.job`),
    receiptString(v.sha256, `${where}.sha256`),
    new CelTrainer(
      receiptString(trainer.kind, `${where}.trainer.kind`),
      receiptString(trainer.name ?? '', `${where}.trainer.name`),
      receiptString(trainer.digest ?? '', `${where}.trainer.digest`),
    ),
    outputs.map((o: unknown, j) => {
      if (!isRecord(o)) bad(`${where}.outputs[${j}] must be a map`);
      return new CelReceiptOutput(
        receiptString(o.file, `${where}.outputs[${j}].file`),
        receiptString(o.sha256, `${where}.outputs[${j}].sha256`),
      );
    }),
    // The sample TEE is insecure whatever the record says, as for submodules.
    new CelReceiptTee(
      kind,
      tee.insecure || kind === 'sample',
      receiptString(tee.status, `${where}.tee.status`),
      receiptString(tee.measurement ?? '', `${where}.tee.measurement`),
    ),
    at,
  );
}

function toReceipts(v: unknown): CelReceipt[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) bad(`receipts must be a list, got ${describe(v)}`);
  if (v.length > INPUT_LIMITS.maxReceipts) bad(`more than ${INPUT_LIMITS.maxReceipts} receipts`);
  return v.map(toReceipt);
}

/** `gpu0`, `gpu1`, … in numeric order. */
function gpuIndex(name: string): number | undefined {
  const m = /^gpu(0|[1-9][0-9]{0,5})$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Placeholder for a missing cpu0: every policy over `cpu` then fails instead of erroring. */
const NO_CPU = (): CelSubmod =>
  new CelSubmod('', 'none', new Map(TRUST_CLAIMS.map((c) => [c, 0n])), Object.create(null), '', false, []);

/** The CEL variables for an input; throws PolicyInputError on bad data. */
export function toActivation(input: unknown): Record<string, unknown> {
  if (!isRecord(input)) bad(`the policy input must be a map, got ${describe(input)}`);
  const submodsIn = input.submods;
  if (!isRecord(submodsIn)) bad('submods must be a map');
  const names = Object.keys(submodsIn);
  if (names.length > INPUT_LIMITS.maxSubmods) bad(`more than ${INPUT_LIMITS.maxSubmods} submodules`);
  const budget: Budget = { left: INPUT_LIMITS.maxValues, chars: INPUT_LIMITS.maxStringChars };
  const submods: Record<string, CelSubmod> = Object.create(null);
  for (const name of names) submods[name] = toSubmod(name, submodsIn[name], budget);
  const gpus = names
    .map((n) => [gpuIndex(n), n] as const)
    .filter((x): x is readonly [number, string] => x[0] !== undefined)
    .sort((a, b) => a[0] - b[0])
    .map(([, n]) => submods[n]!);
  const cpu = submods.cpu0 ?? NO_CPU();
  const r = input.resource;
  if (!isRecord(r)) bad('resource must be a map');
  const now = input.now;
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) bad('now must be a valid Date');
  if (typeof input.dev_mode !== 'boolean') bad('dev_mode must be a boolean');
  return {
    submods,
    cpu,
    gpus,
    resource: new CelResource(
      str(r.uri, 'resource.uri'),
      str(r.repository, 'resource.repository'),
      str(r.type, 'resource.type'),
      str(r.tag, 'resource.tag'),
    ),
    tenant: str(input.tenant, 'tenant'),
    tee: cpu.kind,
    init_data: jsonMap(input.init_data, 'init_data', budget),
    now,
    dev_mode: input.dev_mode,
    receipts: toReceipts(input.receipts),
  };
}
