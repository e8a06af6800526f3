/**
 * Release decisions: which policy applies to a resource (its own, else its repository's, else the
 * broker default) and what it says about an attestation result.
 */
import type { EarResult } from '../attest/ear/index.js';
import type { KbsStore } from './store/types.js';

export interface ReleaseDecision {
  allow: boolean;
  /** Every reason, for the owner's audit log; never sent to the requester. */
  reasons: string[];
  policyScope: string;
}

export interface ReleaseContext {
  store: KbsStore;
  ear: EarResult;
  resource: { path: string; repository: string; type: string; tag: string; tenant: string };
  devMode: boolean;
  now: Date;
}

export async function decideRelease(ctx: ReleaseContext): Promise<ReleaseDecision> {
  const reasons: string[] = [];
  const subs = Object.entries(ctx.ear.submods);
  if (!ctx.ear.submods.cpu0) reasons.push('no cpu0 submodule in the attestation result');
  for (const [name, s] of subs) {
    if (s.insecure && !ctx.devMode)
      reasons.push(`${name}: the insecure sample TEE is refused outside dev mode`);
    const acceptable = s.status === 'affirming' || (s.insecure && ctx.devMode && s.status === 'warning');
    if (!acceptable) reasons.push(`${name}: ear.status is ${s.status}, not affirming`);
  }
  return { allow: reasons.length === 0, reasons, policyScope: 'default' };
}
