/**
 * Policy (src/policy): resource policies in CEL over a verified attestation result, and the store of
 * reference values that appraisal judges measurements against. Web-standard: runs in browsers too.
 * See docs/policy.md.
 */
export { PolicyCache } from './cache.js';
export {
  type CompiledPolicy,
  type Conjunct,
  compilePolicy,
  evaluatesOnMainThread,
  MAIN_THREAD_MAX_COST,
  POLICY_LIMITS,
  PolicyError,
  type PolicyErrorCode,
} from './compile.js';
export { DEFAULT_RESOURCE_POLICY } from './default.js';
export {
  celValue,
  compileDocumentPolicy,
  type DocumentPolicy,
  evaluateDocumentPolicy,
} from './document.js';
export {
  type ConjunctOutcome,
  type ExplainedConjunct,
  type Explanation,
  evaluatePolicy,
  explain,
  type PolicyDecision,
  PreparedPolicyInput,
  PUBLIC_DENIAL_MESSAGE,
  preparePolicyInput,
} from './evaluate.js';
export {
  INPUT_LIMITS,
  type PolicyContext,
  type PolicyInput,
  PolicyInputError,
  type PolicyReceipt,
  type PolicyResource,
  type PolicySubmod,
  policyInputFromEar,
  TRUST_CLAIMS,
} from './input.js';
export {
  type ActiveQuery,
  activeReferenceValues,
  type HistoryQuery,
  type ListQuery,
  MemoryReferenceValueStore,
  type MemoryStoreOptions,
  REFERENCE_VALUE_LIMITS,
  type ReferenceValue,
  ReferenceValueError,
  type ReferenceValueErrorCode,
  type ReferenceValueInput,
  type ReferenceValueStore,
  referenceValuesFor,
  TEE_KINDS,
  validateReferenceValueInput,
} from './refvalues.js';
