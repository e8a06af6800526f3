/**
 * One policy evaluation as a release decision needs it, the same on the event loop (decide.ts) and on
 * a policy worker (policy-worker.ts), so both give the same decisions and reasons byte for byte.
 */
import {
  type CompiledPolicy,
  type ExplainedConjunct,
  evaluatePolicy,
  explain,
  type PolicyDecision,
  type PolicyInput,
} from '../policy/index.js';

export interface PolicyRun {
  decision: PolicyDecision;
  /** Every top-level clause with its outcome (only when asked to explain). */
  conjuncts?: ExplainedConjunct[];
}

/** Evaluates, and with `explainClauses` also explains (explain() decides as evaluatePolicy() does). */
export function runPolicy(policy: CompiledPolicy, input: PolicyInput, explainClauses: boolean): PolicyRun {
  if (!explainClauses) return { decision: evaluatePolicy(policy, input) };
  const { conjuncts, attestation: _, ...decision } = explain(policy, input);
  return { decision, conjuncts };
}

/** What the event loop sends a policy worker. */
export interface PolicyJob {
  id: number;
  source: string;
  input: PolicyInput;
  explainClauses: boolean;
}

/** What a policy worker answers: once `ready` when it has loaded, then one result per job. */
export type PolicyWorkerMessage = { type: 'ready' } | { type: 'result'; id: number; run: PolicyRun };
