/**
 * Verifying a confidential inference server before talking to it (Web Crypto only, so it runs in
 * browsers): the attestation document's evidence is appraised by src/attest, its report data must
 * bind the identity (OHTTP keys, receipt key, models, software), and the client's own policy decides
 * whether what was proven is enough. Nothing is sent to a server that fails any step.
 */

import {
  appraiseComposite,
  type CompositeAppraisal,
  certTableCollateral,
  createDefaultRegistry,
  type EarResult,
  earDisagreement,
  verifyEar,
} from '../attest/index.js';
import type { CollateralSource, EarStatus, VerifierRegistry } from '../attest/types.js';
import { decodeKeyConfigList, type KeyConfig } from '../ohttp/index.js';
import { fromBase64, toHex } from '../util/index.js';
import {
  ATTESTATION_TYPE,
  type AttestationDocument,
  IDENTITY_TYPE,
  identityReportData,
  type ModelIdentity,
} from '../wire/index.js';
import { type AdapterPin, type ClientPolicy, parseAdapterPin, statusAccepted } from './policy.js';

export class VerificationError extends Error {
  override name = 'VerificationError';
  constructor(
    /** Stable: `bad-document`, `binding`, `evidence`, `tee-not-allowed`, `status`, `measurement`, `model`, `adapter`, `software`, `shared-keys`, `gpu`, `nonce`, `ear`, `receipt`, `bad-response`, `bad-request`. */
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface VerifyServerOptions {
  policy: ClientPolicy;
  /** Where certificates, CRLs and TCB info come from; e.g. `httpSource()` for Intel PCS, AMD KDS, NVIDIA. */
  collateral: CollateralSource;
  registry?: VerifierRegistry;
  at?: Date;
  /** Test authorities only; production leaves the bundled vendor roots. */
  trustAnchors?: Uint8Array[];
  gpuTrustAnchors?: Uint8Array[];
  /** The key broker's EAR verification key: when given, the document's EAR token must verify and agree. */
  earKey?: CryptoKey | JsonWebKey;
  /** The nonce the document was requested with (hex); it must be the one the evidence binds. */
  nonce?: string;
}

export interface VerifiedServer {
  document: AttestationDocument;
  appraisal: CompositeAppraisal;
  /** Report data (hex) of the server's standing identity, without our nonce: what its receipts name. */
  reportData: string;
  keyConfigs: KeyConfig[];
  ear?: EarResult;
  /** What a person should know even though the policy accepted it (sample TEE, plaintext allowed, …). */
  warnings: string[];
}

function fail(code: string, message: string, cause?: unknown): never {
  throw new VerificationError(code, message, cause === undefined ? undefined : { cause });
}

function sameClaim(actual: unknown, expected: string): boolean {
  return typeof actual === 'string' && actual.toLowerCase() === expected.toLowerCase();
}

export async function verifyServer(
  document: AttestationDocument,
  o: VerifyServerOptions,
): Promise<VerifiedServer> {
  const policy = o.policy;
  if (
    document?.type !== ATTESTATION_TYPE ||
    document.identity?.type !== IDENTITY_TYPE ||
    !document.evidence
  ) {
    fail('bad-document', 'the server did not return a Cloister inference attestation document');
  }
  const { identity, evidence } = document;
  if (o.nonce !== undefined && identity.nonce !== o.nonce.toLowerCase()) {
    fail('nonce', 'the attestation does not answer our nonce (stale or replayed evidence)');
  }
  if (!policy.tees.includes(evidence.kind)) {
    fail(
      'tee-not-allowed',
      `the server runs in a '${evidence.kind}' TEE; the policy accepts ${policy.tees.join(', ') || 'none'}`,
    );
  }
  if (policy.requireGpu && evidence.gpus.length === 0)
    fail('gpu', 'the policy requires an attested confidential GPU; the server has none');
  const reportData = await identityReportData(identity);
  let appraisal: CompositeAppraisal;
  try {
    appraisal = await appraiseComposite(
      {
        cpu: { kind: evidence.kind as never, evidence: fromBase64(evidence.evidence) },
        gpus: evidence.gpus.map((g) => ({ kind: 'nvidia' as const, evidence: fromBase64(g) })),
      },
      {
        at: o.at ?? new Date(),
        // An SEV-SNP host's certificate table (VCEK, ASK, ARK) saves a trip to AMD; it is only a
        // candidate: the chain must still verify to the AMD root.
        collateral: evidence.auxblob
          ? certTableCollateral(fromBase64(evidence.auxblob), o.collateral)
          : o.collateral,
        expectedReportData: reportData,
        ...(o.trustAnchors ? { trustAnchors: o.trustAnchors } : {}),
      },
      o.registry ?? createDefaultRegistry(),
      o.gpuTrustAnchors ? { gpuTrustAnchors: o.gpuTrustAnchors } : {},
    );
  } catch (e) {
    const code = (e as { code?: string }).code;
    const binding = code === 'report-data-mismatch' || code === 'gpu-not-bound';
    fail(
      binding ? 'binding' : 'evidence',
      `the server's evidence does not verify: ${(e as Error).message}`,
      e,
    );
  }
  if (!statusAccepted(appraisal.status, policy)) {
    const why = Object.entries(appraisal.submods)
      .flatMap(([n, a]) =>
        a.findings.filter((f) => f.status !== 'affirming').map((f) => `${n}: ${f.message}`),
      )
      .slice(0, 5);
    fail(
      'status',
      `the server's TEE appraises as ${appraisal.status}; the policy needs ${policy.minStatus}${why.length ? ` (${why.join('; ')})` : ''}`,
    );
  }
  const cpu = appraisal.submods.cpu0!;
  for (const [claim, allowed] of Object.entries(policy.measurements)) {
    if (!allowed.some((v) => sameClaim(cpu.claims[claim], v))) {
      fail(
        'measurement',
        `${claim} is ${String(cpu.claims[claim] ?? 'absent')}; the policy expects ${allowed.join(' or ')}`,
      );
    }
  }
  if (policy.models.length > 0 && !identity.models.some((m) => policy.models.includes(m.digest))) {
    fail(
      'model',
      `none of the server's models (${identity.models.map((m) => `${m.id} ${m.digest}`).join(', ')}) is one the policy allows`,
    );
  }
  const candidates =
    policy.models.length > 0
      ? identity.models.filter((m) => policy.models.includes(m.digest))
      : identity.models;
  const refusals = candidates.map((m) => adapterRefusal(m, policy));
  if (candidates.length > 0 && refusals.every((r) => r !== undefined)) fail('adapter', refusals[0]!);
  if (identity.sharedKeys !== undefined && !policy.sharedKeys.includes(identity.sharedKeys)) {
    fail(
      'shared-keys',
      `the server's OHTTP and receipt keys were not made in its TEE but come from ${identity.sharedKeys}, which the policy does not name in sharedKeys`,
    );
  }
  const sw = identity.software;
  if (policy.software.versions.length > 0 && !policy.software.versions.includes(sw.version)) {
    fail(
      'software',
      `the server runs Cloister ${sw.version}; the policy allows ${policy.software.versions.join(', ')}`,
    );
  }
  if (policy.software.digests.length > 0 && !policy.software.digests.includes(sw.digest)) {
    fail('software', `the server's code digest ${sw.digest} is not one the policy allows`);
  }
  let keyConfigs: KeyConfig[];
  try {
    keyConfigs = decodeKeyConfigList(fromBase64(identity.ohttpKeys));
  } catch (e) {
    fail('bad-document', `the attested OHTTP key configuration does not decode: ${(e as Error).message}`, e);
  }
  const { nonce: _fresh, ...standing } = identity;
  const out: VerifiedServer = {
    document,
    appraisal,
    reportData: toHex(await identityReportData(standing)),
    keyConfigs,
    warnings: [],
  };
  if (o.earKey && document.ear) {
    let ear: EarResult;
    try {
      ear = await verifyEar(document.ear, o.earKey, { at: o.at ?? new Date() });
    } catch (e) {
      fail('ear', `the key broker's EAR token does not verify: ${(e as Error).message}`, e);
    }
    const differ = earDisagreement(ear, cpu);
    if (differ.length > 0)
      fail('ear', `the EAR token describes another TEE than the evidence (${differ.join(', ')} differ)`);
    out.ear = ear;
  }
  if (appraisal.submods.cpu0?.insecure)
    out.warnings.push('the sample TEE is software only: nothing here is confidential');
  for (const m of identity.models) {
    if (m.adapters?.length && policy.adapters === undefined)
      out.warnings.push(
        `the model '${m.id}' carries ${m.adapters.length} LoRA adapter(s) the policy does not pin (name them in adapters)`,
      );
  }
  if (identity.plaintextAllowed)
    out.warnings.push('the server also accepts plaintext requests (ours still go end-to-end encrypted)');
  if (appraisal.status === ('warning' satisfies EarStatus))
    out.warnings.push('the appraisal has warnings (see findings)');
  return out;
}

/** The digest the server attests for `modelId`, when the policy allows it; throws otherwise. */
export function allowedModel(server: VerifiedServer, modelId: string, policy: ClientPolicy): string {
  const m = server.document.identity.models.find((x) => x.id === modelId);
  if (!m) fail('model', `the attested server does not serve a model '${modelId}'`);
  if (policy.models.length > 0 && !policy.models.includes(m.digest)) {
    fail('model', `the model '${modelId}' (${m.digest}) is not one the policy allows`);
  }
  const refusal = adapterRefusal(m, policy);
  if (refusal !== undefined) fail('adapter', refusal);
  return m.digest;
}

/**
 * Why the policy refuses a model's LoRA adapters (see ClientPolicy.adapters), or undefined. Scales are
 * compared as float32, the value llama.cpp is handed.
 */
export function adapterRefusal(m: ModelIdentity, policy: ClientPolicy): string | undefined {
  const carried = m.adapters ?? [];
  const named = carried.length
    ? `LoRA adapter(s) ${carried.map((a) => `${a.digest} (scale ${a.scale})`).join(', ')}`
    : 'no LoRA adapter';
  if (policy.adapters === undefined) {
    if (carried.length === 0 || policy.models.length === 0) return undefined;
    return `the model '${m.id}' (${m.digest}) carries ${named}, which the policy does not name: pin them in adapters (or adapters [] for the bare model)`;
  }
  const pins = policy.adapters.map(parseAdapterPin);
  const key = (a: AdapterPin) => `${a.digest}@${Math.fround(a.scale)}`;
  const want = pins.map(key).sort();
  const have = carried.map(key).sort();
  if (want.length === have.length && want.every((d, i) => d === have[i])) return undefined;
  const wanted = pins.map((p) => `${p.digest} (scale ${p.scale})`).join(', ');
  return `the model '${m.id}' carries ${named}; the policy wants ${pins.length ? `exactly ${wanted}` : 'none'}`;
}
