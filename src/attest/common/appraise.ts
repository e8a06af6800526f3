/** Appraisal steps every TEE kind shares. */
import type { EarStatus, Finding, TrustVector } from './types.js';

/**
 * Claims that pin what runs in a TEE (launch measurement, runtime registers, enclave identity, host
 * data), across kinds: what a person compares with published values, and what must agree when two
 * attestations claim to describe the same TEE.
 */
export const MEASUREMENT_CLAIMS: readonly string[] = [
  'measurement',
  'host_data',
  'mr_td',
  'rtmr0',
  'rtmr1',
  'rtmr2',
  'rtmr3',
  'mr_enclave',
  'mr_signer',
];

/** AR4SI "affirming" value for a trust-vector claim. */
export const AFFIRM = 2;

export type Judge = (check: string, status: EarStatus, message: string, vector: keyof TrustVector) => void;

/**
 * The string a reference value is compared with: hex strings case-insensitively, numbers and booleans
 * as written, structured values (SNP TCB versions) by their raw number.
 */
export function comparable(value: unknown): string | undefined {
  if (typeof value === 'string') return value.toLowerCase();
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (value && typeof value === 'object' && 'raw' in value) return String((value as { raw: unknown }).raw);
  return undefined;
}

/**
 * Compares each reference value with the claim of the same name: a claim the evidence does not carry
 * and a value outside the list are contraindicated; a match is an affirming finding (and affirms the
 * executables when the claim measures them).
 */
export function judgeReferenceValues(o: {
  refs: Record<string, string[]>;
  claims: Record<string, unknown>;
  /** Which trust-vector claim each reference-able claim bears on. */
  vectors: Record<string, keyof TrustVector>;
  what: string;
  judge: Judge;
  findings: Finding[];
  tv: TrustVector;
}): void {
  for (const [name, values] of Object.entries(o.refs)) {
    const vector = o.vectors[name];
    const have = comparable(o.claims[name]);
    if (!vector || have === undefined) {
      o.judge(
        `reference.${name}`,
        'contraindicated',
        `reference value for "${name}", which ${o.what} evidence does not carry`,
        'configuration',
      );
      continue;
    }
    if (values.some((x) => x.toLowerCase() === have)) {
      o.findings.push({
        check: `reference.${name}`,
        status: 'affirming',
        message: `${name} matches a reference value`,
      });
      if (vector === 'executables' && o.tv.executables === undefined) o.tv.executables = AFFIRM;
    } else {
      o.judge(
        `reference.${name}`,
        'contraindicated',
        `${name} ${have} matches none of the ${values.length} reference values`,
        vector,
      );
    }
  }
}
