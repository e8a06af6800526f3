/**
 * Evaluating compiled policies. Evaluation never throws: bad input, a missing key or a wrong type is a
 * denial whose reason says what went wrong. Reasons are for the operator (admin log, explain
 * endpoint); the requester only ever sees PUBLIC_DENIAL_MESSAGE, so a denial does not teach an
 * attacker which check to work around.
 */
import type { ParseResult } from '@marcbachmann/cel-js';
import type { CelSubmod, CompiledPolicy, Conjunct } from './compile.js';
import { type PolicyInput, toActivation } from './input.js';
import { runQuietly } from './quiet.js';

/** What a requester is told when a policy denies: nothing more. */
export const PUBLIC_DENIAL_MESSAGE = 'denied by policy';

export interface PolicyDecision {
  allow: boolean;
  /** Why it was denied (empty when allowed): for the admin log, never for the requester. */
  reasons: string[];
  /** For the requester: PUBLIC_DENIAL_MESSAGE when denied, absent when allowed. */
  publicMessage?: string;
}

export type ConjunctOutcome = 'true' | 'false' | 'error';

export interface ExplainedConjunct {
  source: string;
  line: number;
  column: number;
  outcome: ConjunctOutcome;
  /** The evaluation error, or the non-boolean value, when outcome is 'error'. */
  error?: string;
}

export interface Explanation extends PolicyDecision {
  /** Every top-level conjunct with its outcome, in source order. */
  conjuncts: ExplainedConjunct[];
  /** Each submodule's EAR status and the verifier's findings that were not affirming. */
  attestation: { submod: string; kind: string; status: string; reasons: string[] }[];
}

/** An input converted once for evaluation, so several policies can share the conversion. */
export class PreparedPolicyInput {
  /** @internal */
  constructor(
    readonly activation: Record<string, unknown> | undefined,
    readonly error: string | undefined,
    readonly input: unknown,
  ) {}
}

function message(e: unknown): string {
  if (e instanceof Error) return (e.message.split('\n')[0] ?? '').trim() || e.name;
  return String(e);
}

/** Validates and converts an input; bad data is kept as an error for the denial reason. */
export function preparePolicyInput(input: PolicyInput | unknown): PreparedPolicyInput {
  if (input instanceof PreparedPolicyInput) return input;
  try {
    return new PreparedPolicyInput(toActivation(input), undefined, input);
  } catch (e) {
    return new PreparedPolicyInput(undefined, `invalid policy input: ${message(e)}`, input);
  }
}

function run(
  c: { run: ParseResult },
  act: Record<string, unknown>,
): { outcome: ConjunctOutcome; error?: string } {
  try {
    const v = runQuietly(c.run, act);
    if (v === true) return { outcome: 'true' };
    if (v === false) return { outcome: 'false' };
    return { outcome: 'error', error: `evaluated to a ${typeof v}, not a bool` };
  } catch (e) {
    return { outcome: 'error', error: message(e) };
  }
}

function conjunctReason(c: Conjunct, o: { outcome: ConjunctOutcome; error?: string }): string {
  const where = `line ${c.line}:${c.column}`;
  return o.outcome === 'false'
    ? `failed (${where}): ${c.source}`
    : `error (${where}): ${c.source}: ${o.error}`;
}

/** What the verifiers found wrong with each submodule that is not affirming, for the same log line. */
function attestationReasons(act: Record<string, unknown>): string[] {
  const submods = act.submods as Record<string, CelSubmod>;
  return Object.values(submods)
    .filter((s) => s.status !== 'affirming')
    .map((s) => {
      const found = s.reasons.map((r) => `${r.check} (${r.status}): ${r.message}`).join('; ');
      return `attestation: ${s.name} (${s.kind || 'unknown kind'}) is ${s.status}${found ? ` — ${found}` : ''}`;
    });
}

function denied(reasons: string[]): PolicyDecision {
  return { allow: false, reasons, publicMessage: PUBLIC_DENIAL_MESSAGE };
}

/**
 * Evaluates a policy: allowed only when it returns exactly `true`. On denial the reasons name each
 * failing top-level conjunct (or the evaluation error), for the admin log. Never throws.
 */
export function evaluatePolicy(
  policy: CompiledPolicy,
  input: PolicyInput | PreparedPolicyInput,
): PolicyDecision {
  try {
    const prepared = preparePolicyInput(input);
    if (prepared.activation === undefined) return denied([prepared.error!]);
    const whole = run(policy, prepared.activation);
    if (whole.outcome === 'true') return { allow: true, reasons: [] };
    // The denial path may spend more: explain which clauses failed (policy.conjuncts is ≥ 1 long).
    const reasons: string[] = [];
    for (const c of policy.conjuncts) {
      const o = policy.conjuncts.length === 1 ? whole : run(c, prepared.activation);
      if (o.outcome !== 'true') reasons.push(conjunctReason(c, o));
    }
    if (reasons.length === 0) {
      reasons.push(
        whole.outcome === 'false'
          ? 'the policy evaluated to false'
          : `the policy could not be evaluated: ${whole.error}`,
      );
    }
    return denied([...reasons, ...attestationReasons(prepared.activation)]);
  } catch (e) {
    // Defensive: nothing above should throw, but a denial is the only safe answer if it does.
    return denied([`policy evaluation failed: ${message(e)}`]);
  }
}

function attestationSummary(input: unknown): Explanation['attestation'] {
  try {
    const submods = (input as PolicyInput).submods;
    if (typeof submods !== 'object' || submods === null) return [];
    return Object.entries(submods).map(([name, s]) => ({
      submod: name,
      kind: String(s?.kind ?? ''),
      status: String(s?.status ?? ''),
      reasons: Array.isArray(s?.reasons)
        ? s.reasons.map((r) => `${String(r?.check)} (${String(r?.status)}): ${String(r?.message)}`)
        : [],
    }));
  } catch {
    return [];
  }
}

/**
 * Explains a decision for an operator (`POST /admin/v1/policy/evaluate`): the decision, every
 * top-level conjunct with its outcome, and the attestation findings. A policy that is not a top-level
 * conjunction is one conjunct; clauses inside `||`, `?:` or macros are not broken down. Never throws.
 */
export function explain(policy: CompiledPolicy, input: PolicyInput | PreparedPolicyInput): Explanation {
  const prepared = preparePolicyInput(input);
  const decision = evaluatePolicy(policy, prepared);
  const conjuncts: ExplainedConjunct[] = policy.conjuncts.map((c) => {
    const o =
      prepared.activation === undefined
        ? { outcome: 'error' as const, error: prepared.error }
        : run(c, prepared.activation);
    return {
      source: c.source,
      line: c.line,
      column: c.column,
      outcome: o.outcome,
      ...(o.error !== undefined ? { error: o.error } : {}),
    };
  });
  return { ...decision, conjuncts, attestation: attestationSummary(prepared.input) };
}
