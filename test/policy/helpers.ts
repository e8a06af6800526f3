import type { PolicyInput, PolicySubmod } from '../../src/policy/index.js';

export function submod(over: Partial<PolicySubmod> = {}): PolicySubmod {
  return {
    status: 'affirming',
    trust: { hardware: 2, configuration: 2, executables: 2, instance_identity: 2 },
    claims: {},
    kind: 'tdx',
    insecure: false,
    reasons: [],
    ...over,
  };
}

export const AT = new Date('2026-03-01T12:00:00Z');

/** A TDX CPU with two affirming H100s, asking for kbs:///acme/models/llama. */
export function input(over: Partial<PolicyInput> = {}): PolicyInput {
  return {
    submods: {
      cpu0: submod({ claims: { mr_td: 'aa'.repeat(48), tcb_svn: 3 } }),
      gpu0: submod({ kind: 'nvidia', claims: { hwmodel: 'GH100' } }),
      gpu1: submod({ kind: 'nvidia', claims: { hwmodel: 'GH100' } }),
    },
    resource: { uri: 'kbs:///acme/models/llama', repository: 'acme', type: 'models', tag: 'llama' },
    tenant: 'acme',
    now: AT,
    dev_mode: false,
    ...over,
  };
}
