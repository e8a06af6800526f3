/**
 * CEL expressions over JSON documents (a verified receipt, say), in the same CEL dialect as resource
 * policies: the same library, limits on size, depth and nesting, forbidden functions, and the same
 * denial reasons naming each failing top-level clause. What differs is the input: named variables of
 * JSON values (maps, lists, strings, doubles, booleans, null) and timestamps, typed `dyn` unless the
 * caller says otherwise, instead of the typed attestation input of resource policies.
 *
 * There is no worst-case cost bound here (cost.ts knows only the resource-policy input): these
 * expressions are for the person who wrote them, run over documents of a size the caller bounds
 * (`cloister receipt verify --policy` reads a receipt of a few MB at most), not for a service that
 * evaluates strangers' policies under a time limit.
 */
import { Environment } from '@marcbachmann/cel-js';
import { type Conjunct, environmentLimits, parseSource, splitConjuncts } from './compile.js';
import type { PolicyDecision } from './evaluate.js';
import { runQuietly } from './quiet.js';

export interface DocumentPolicy {
  readonly source: string;
  /** Variable name → CEL type, as compiled. */
  readonly variables: Readonly<Record<string, string>>;
  /** @internal */
  readonly run: ReturnType<Environment['parse']>;
  readonly conjuncts: readonly Conjunct[];
}

/** Nesting deeper than this in a document is refused rather than walked. */
const MAX_DEPTH = 64;

/**
 * Compiles a boolean CEL expression over the named variables (name → CEL type, e.g. `dyn`,
 * `map<string, dyn>`, `google.protobuf.Timestamp`). Throws PolicyError with line and column.
 */
export function compileDocumentPolicy(source: string, variables: Record<string, string>): DocumentPolicy {
  let env = new Environment({ enableOptionalTypes: true, limits: environmentLimits() });
  for (const [name, type] of Object.entries(variables)) env = env.registerVariable(name, type);
  const run = parseSource(env, source);
  return Object.freeze({
    source,
    variables: Object.freeze({ ...variables }),
    run,
    conjuncts: Object.freeze(splitConjuncts(env, source, run)),
  });
}

/**
 * A JSON-like value as CEL reads it: objects become null-prototype maps (so `has(x.constructor)` is
 * false), `undefined` members are dropped, numbers stay doubles; Dates and bytes pass through.
 */
export function celValue(v: unknown, depth = 0): unknown {
  if (depth > MAX_DEPTH) throw new RangeError(`the document is nested deeper than ${MAX_DEPTH}`);
  if (v === null || typeof v === 'boolean' || typeof v === 'string' || typeof v === 'bigint') return v;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new RangeError('the document holds a number that is not finite');
    return v;
  }
  if (v instanceof Date || v instanceof Uint8Array) return v;
  if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : celValue(x, depth + 1)));
  if (typeof v === 'object') {
    const out: Record<string, unknown> = Object.create(null);
    for (const [k, x] of Object.entries(v as Record<string, unknown>))
      if (x !== undefined) out[k] = celValue(x, depth + 1);
    return out;
  }
  throw new TypeError(`the document holds a ${typeof v}, which is not JSON`);
}

function message(e: unknown): string {
  if (e instanceof Error) return (e.message.split('\n')[0] ?? '').trim() || e.name;
  return String(e);
}

function runOne(run: DocumentPolicy['run'], act: Record<string, unknown>): { ok: boolean; error?: string } {
  try {
    const v = runQuietly(run, act);
    if (v === true) return { ok: true };
    if (v === false) return { ok: false };
    return { ok: false, error: `evaluated to a ${typeof v}, not a bool` };
  } catch (e) {
    return { ok: false, error: message(e) };
  }
}

/**
 * Evaluates a compiled document policy on `values` (one per variable, converted with celValue): true
 * only when it returns exactly `true`; otherwise the reasons name each failing top-level clause with
 * its line and column, or the error it raised. Never throws.
 */
export function evaluateDocumentPolicy(
  policy: DocumentPolicy,
  values: Record<string, unknown>,
): PolicyDecision {
  let act: Record<string, unknown>;
  try {
    act = Object.create(null);
    for (const name of Object.keys(policy.variables)) act[name] = celValue(values[name] ?? null);
  } catch (e) {
    return { allow: false, reasons: [`invalid document: ${message(e)}`] };
  }
  const whole = runOne(policy.run, act);
  if (whole.ok) return { allow: true, reasons: [] };
  const reasons: string[] = [];
  for (const c of policy.conjuncts) {
    const o = policy.conjuncts.length === 1 ? whole : runOne(c.run, act);
    if (o.ok) continue;
    const where = `line ${c.line}:${c.column}`;
    reasons.push(
      o.error === undefined ? `failed (${where}): ${c.source}` : `error (${where}): ${c.source}: ${o.error}`,
    );
  }
  if (reasons.length === 0)
    reasons.push(
      whole.error === undefined
        ? 'the policy evaluated to false'
        : `the policy could not be evaluated: ${whole.error}`,
    );
  return { allow: false, reasons };
}
