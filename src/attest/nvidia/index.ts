/**
 * NVIDIA confidential GPUs (Hopper H100/H200, Blackwell B200): SPDM attestation reports signed by the
 * GPU's attestation key, verified against the NVIDIA Device Identity CA, and appraised against NVIDIA's
 * signed driver and VBIOS reference integrity manifests. See docs/attestation/nvidia.md.
 */

import { equalBytes, fromBase64, sha256, toHex, utf8 } from '../../util/index.js';
import type { Appraisal, CollateralSource, KindVerifier, VerifyOptions } from '../common/types.js';
import { AttestationError } from '../common/types.js';
import { type ContextSlot, contextOf } from '../context.js';
import { BoundedCache } from '../memo.js';
import { appraiseGpuReport } from './appraise.js';
import { parseNvidiaEvidence } from './evidence.js';
import { checkRevocation, ocspRequest, ocspTargets } from './ocsp.js';
import type { GpuOpaqueData } from './opaque.js';
import { type ParsedGpuReport, parseGpuReport } from './report.js';
import { parseRim, type VerifiedRim, verifyRim } from './rim.js';
import { type GpuArch, verifyGpuReport } from './verify.js';

export { appraiseGpuReport, type GpuAppraisalInput } from './appraise.js';
export {
  encodeNvidiaEvidence,
  type NvidiaEvidence,
  parseNvidiaEvidence,
  type ReportedCcMode,
} from './evidence.js';
export { compareMeasurements, type MeasurementComparison, type MeasurementMismatch } from './measurements.js';
export {
  checkRevocation,
  NVIDIA_OCSP_URL,
  type OcspTarget,
  ocspRequest,
  ocspTargets,
  parseOcspResponse,
  type RevocationResult,
} from './ocsp.js';
export { formatVbiosVersion, type GpuOpaqueData, OPAQUE_FIELD } from './opaque.js';
export { type MeasurementBlock, type ParsedGpuReport, parseGpuReport } from './report.js';
export { type ParsedRim, parseRim, type RimMeasurement, type VerifiedRim, verifyRim } from './rim.js';
export { NVIDIA_DEVICE_IDENTITY_CA_PEM, NVIDIA_RIM_ROOT_CA_PEM } from './roots.js';
export { type GpuArch, type GpuVerifyOptions, type VerifiedGpuReport, verifyGpuReport } from './verify.js';

export const NVIDIA_RIM_SERVICE = 'https://rim.attestation.nvidia.com/v1/rim/';

/** NVIDIA RIM service ids (nvat get_driver_rim_id / get_vbios_rim_id). */
export function rimIds(arch: GpuArch, opaque: GpuOpaqueData): { driver?: string; vbios?: string } {
  const out: { driver?: string; vbios?: string } = {};
  if (opaque.driverVersion) {
    out.driver =
      arch === 'HOPPER'
        ? `NV_GPU_DRIVER_GH100_${opaque.driverVersion}`
        : `NV_GPU_CC_DRIVER_${opaque.chipInfo || 'GB100'}_${opaque.driverVersion}`;
  }
  if (opaque.project && opaque.projectSku && opaque.chipSku && opaque.vbiosVersion) {
    out.vbios = `NV_GPU_VBIOS_${opaque.project}_${opaque.projectSku}_${opaque.chipSku}_${opaque.vbiosVersion.replace(/\./g, '')}`;
  }
  // The strings come from the GPU's report (printable ASCII, nothing more): an id that is not plain
  // letters, digits, `_`, `.` and `-` is no RIM NVIDIA publishes, and would otherwise carry `/`, `?`
  // or `#` into the service's URL and into file names. Such an id is not asked for (fails closed).
  for (const k of ['driver', 'vbios'] as const) if (out[k] && !RIM_ID.test(out[k])) delete out[k];
  return out;
}

/** What a RIM id may be made of. */
const RIM_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * A RIM from collateral: online the RIM service answers JSON { id, rim: base64(XML) }; offline a folder
 * holds the XML as `<id>.xml`, `<id>.swidtag` or `driver_rim.swidtag` / `vbios_rim.swidtag`.
 */
async function fetchRim(source: CollateralSource, id: string, generic: string): Promise<string | undefined> {
  const item = await source.get({
    url: NVIDIA_RIM_SERVICE + id,
    files: [`${id}.xml`, `${id}.swidtag`, generic],
  });
  if (!item) return undefined;
  let text: string;
  try {
    text = utf8.decode(item.body).trim();
  } catch (e) {
    throw new AttestationError('parse', 'bad-rim', `RIM ${id} from collateral is not UTF-8 text`, {
      cause: e,
    });
  }
  if (!text.startsWith('{')) return text;
  try {
    const rim = (JSON.parse(text) as { rim?: unknown }).rim;
    if (typeof rim !== 'string') throw new Error('no "rim" field');
    return utf8.decode(fromBase64(rim));
  } catch (e) {
    throw new AttestationError(
      'parse',
      'bad-rim',
      `RIM service answer for ${id} is malformed: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
}

async function loadRim(
  given: string | undefined,
  source: CollateralSource,
  id: string | undefined,
  generic: string,
  options: VerifyOptions,
  what: string,
): Promise<VerifiedRim | undefined> {
  const xml = given ?? (id ? await fetchRim(source, id, generic) : undefined);
  if (xml === undefined) return undefined;
  // A RIM verified once is reused while its signing chain is valid: it is the same signed document.
  const key = `${what}|${toHex(await sha256(utf8.encode(xml)))}|${(options.trustAnchors ?? []).map(toHex).join(',')}`;
  const rims = contextOf(options).state(RIMS);
  const hit = rims.get(key);
  if (hit && options.at >= hit.chain.notBefore && options.at <= hit.chain.notAfter) return hit;
  const verified = await verifyRim(parseRim(xml), {
    at: options.at,
    trustAnchors: options.trustAnchors,
    what,
    context: contextOf(options),
  });
  rims.set(key, verified);
  return verified;
}

/** Verified RIMs in a VerifierContext, by their text and the trust anchors they were checked with. */
const RIMS: ContextSlot<BoundedCache<VerifiedRim>> = {
  create: () => new BoundedCache<VerifiedRim>(64),
};

/** parse → verify → appraise for one GPU's evidence (see evidence.ts for the accepted forms). */
export async function appraiseNvidiaEvidence(
  evidence: Uint8Array,
  options: VerifyOptions,
): Promise<Appraisal> {
  const env = parseNvidiaEvidence(evidence);
  const report: ParsedGpuReport = parseGpuReport(env.report);
  if (env.nonce && !equalBytes(env.nonce, report.request.nonce)) {
    throw new AttestationError(
      'parse',
      'bad-evidence',
      `evidence says nonce ${toHex(env.nonce)} but the report was requested with ${toHex(report.request.nonce)}`,
    );
  }
  const verified = await verifyGpuReport(report, {
    certChain: env.certChain,
    at: options.at,
    trustAnchors: options.trustAnchors,
    expectedNonce: options.expectedReportData,
    context: contextOf(options),
  });
  if (env.arch && env.arch !== verified.arch) {
    throw new AttestationError(
      'verify',
      'arch-mismatch',
      `evidence says ${env.arch} but the attestation key belongs to a ${verified.arch} GPU (${verified.hwModel})`,
    );
  }
  const ids = rimIds(verified.arch, report.response.opaqueData);
  const driverRim = await loadRim(
    env.driverRim,
    options.collateral,
    ids.driver,
    'driver_rim.swidtag',
    options,
    'driver RIM',
  );
  const vbiosRim = await loadRim(
    env.vbiosRim,
    options.collateral,
    ids.vbios,
    'vbios_rim.swidtag',
    options,
    'VBIOS RIM',
  );
  // The driver and VBIOS RIM chains usually share their CAs: ask about each certificate once.
  const targets = [
    ...ocspTargets(verified.chain.path, 'GPU attestation-key chain', true),
    ...(driverRim ? ocspTargets(driverRim.chain.path, 'driver RIM signing chain', false) : []),
    ...(vbiosRim ? ocspTargets(vbiosRim.chain.path, 'VBIOS RIM signing chain', false) : []),
  ].filter((t, i, all) => all.findIndex((u) => u.cert.equal(t.cert)) === i);
  const candidates = [...(env.ocsp ?? [])];
  for (const t of targets) {
    const item = await options.collateral.get(await ocspRequest(t));
    if (item) candidates.push(item.body);
  }
  const revocation = await checkRevocation(targets, candidates, options.at);
  return appraiseGpuReport({
    verified,
    driverRim,
    vbiosRim,
    reportedCcMode: env.ccMode,
    revocation,
    policy: options.policy,
  });
}

export const nvidiaVerifier: KindVerifier = {
  kind: 'nvidia',
  appraiseEvidence: appraiseNvidiaEvidence,
};
