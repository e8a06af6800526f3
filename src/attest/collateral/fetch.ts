/**
 * Filling an offline collateral folder from the vendor services (`cloister collateral fetch`): which
 * requests a platform needs (Intel TCB info by FMSPC, AMD CRLs by product, NVIDIA RIMs by id), a source
 * that asks the vendors (or a PCCS, or test servers), and a recorder that keeps what verifiers asked for
 * and found, so that verifying a piece of evidence online fetches exactly what it needs offline. Each
 * item is written under the first of its request's file names: the name directorySource looks for first.
 * Web-standard: writing the files is the caller's business.
 */
import { fromBase64, utf8 } from '../../util/index.js';
import type { CollateralItem, CollateralRequest, CollateralSource } from '../common/types.js';
import {
  PCS_BASE,
  type PckCa,
  pckCrlRequest,
  qeIdentityRequest,
  ROOT_CA_CRL_URL,
  rootCaCrlRequest,
  type Tee,
  tcbInfoRequest,
} from '../intel/collateral.js';
import { pcsCollateral } from '../intel/pcs.js';
import { NVIDIA_RIM_SERVICE } from '../nvidia/index.js';
import type { SnpProduct } from '../snp/report.js';
import { certChainRequest, crlRequest, KDS_BASE } from '../snp/verify.js';
import { httpSource } from './index.js';

export type CollateralVendor = 'Intel PCS' | 'AMD KDS' | 'NVIDIA';

/** What an Intel platform (one FMSPC, SGX or TDX) needs: TCB info, QE identity, both PCK CRLs, root CRL. */
export function intelRequests(tee: Tee, fmspc: string): CollateralRequest[] {
  const cas: PckCa[] = ['processor', 'platform'];
  return [tcbInfoRequest(tee, fmspc), qeIdentityRequest(tee), ...cas.map(pckCrlRequest), rootCaCrlRequest()];
}

/** What every SEV-SNP machine of a product shares: the ARK's CRL and the ASK/ARK chain (VCEKs need evidence). */
export function snpProductRequests(product: SnpProduct): CollateralRequest[] {
  return [crlRequest('vcek', product), certChainRequest('vcek', product)];
}

/** A RIM by its id (e.g. NV_GPU_DRIVER_GH100_545.00), as the verifier asks for it. */
export function nvidiaRimRequest(id: string): CollateralRequest {
  return { url: NVIDIA_RIM_SERVICE + id, files: [`${id}.xml`, `${id}.swidtag`] };
}

export function vendorOf(url: string): CollateralVendor {
  if (url.startsWith(PCS_BASE) || url === ROOT_CA_CRL_URL) return 'Intel PCS';
  if (url.startsWith(KDS_BASE)) return 'AMD KDS';
  return 'NVIDIA';
}

export interface VendorSourceOptions {
  fetch?: typeof fetch;
  /** A PCCS (or a test server) serving Intel PCS v4 paths instead of Intel PCS. */
  intelPcsUrl?: string;
  /** Intel PCS subscription key, when the deployment has one. */
  pcsApiKey?: string;
  /** Tests only: servers standing in for AMD KDS and the NVIDIA RIM service. */
  amdKdsUrl?: string;
  nvidiaRimUrl?: string;
}

/**
 * The vendor services: Intel requests through pcsCollateral (a PCCS when named), AMD KDS and NVIDIA
 * over HTTP. A request without a URL (a VLEK, which only the cloud provider has) is never found.
 */
export function vendorSource(o: VendorSourceOptions = {}): CollateralSource {
  const intel = pcsCollateral({
    ...(o.fetch ? { fetch: o.fetch } : {}),
    ...(o.intelPcsUrl ? { baseUrl: o.intelPcsUrl } : {}),
    ...(o.pcsApiKey ? { apiKey: o.pcsApiKey } : {}),
  });
  const http = httpSource(o.fetch ? { fetch: o.fetch } : {});
  const rebase = (req: CollateralRequest, from: string, to: string | undefined): CollateralRequest =>
    to && req.url.startsWith(from)
      ? { ...req, url: `${to.replace(/\/+$/, '')}/${req.url.slice(from.length).replace(/^\/+/, '')}` }
      : req;
  return {
    async get(req) {
      if (req.url === '') return undefined;
      switch (vendorOf(req.url)) {
        case 'Intel PCS':
          return intel.get(req);
        case 'AMD KDS':
          return http.get(rebase(req, KDS_BASE, o.amdKdsUrl));
        default:
          return http.get(rebase(req, NVIDIA_RIM_SERVICE, o.nvidiaRimUrl));
      }
    },
  };
}

export interface RecordedCollateral {
  request: CollateralRequest;
  item: CollateralItem;
}

/** `inner`, remembering every item it found (once per first file name) and every request it did not. */
export function recordingSource(inner: CollateralSource): {
  source: CollateralSource;
  found: Map<string, RecordedCollateral>;
  missing: CollateralRequest[];
} {
  const found = new Map<string, RecordedCollateral>();
  const missing: CollateralRequest[] = [];
  return {
    found,
    missing,
    source: {
      async get(request) {
        const item = await inner.get(request);
        if (item && request.files[0]) found.set(request.files[0], { request, item });
        else if (!item && request.url) missing.push(request);
        return item;
      },
    },
  };
}

/** The HTTP headers a verifier reads from a folder's `<file>.headers.json`: Intel's issuer chains. */
const KEPT_HEADERS = /issuer-chain$/;

/**
 * The files one fetched item becomes in a collateral folder: its body under the request's first file
 * name (a RIM service answer `{rim: base64}` unwrapped to its XML), and the issuer-chain headers
 * beside it when it came with some.
 */
export function collateralFiles(r: RecordedCollateral): { name: string; bytes: Uint8Array }[] {
  const name = r.request.files[0]!;
  let body = r.item.body;
  if (r.request.url.startsWith(NVIDIA_RIM_SERVICE) || /\.(xml|swidtag)$/.test(name)) {
    const text = utf8.decode(body).trim();
    if (text.startsWith('{')) {
      let rim: unknown;
      try {
        rim = (JSON.parse(text) as { rim?: unknown }).rim;
      } catch {
        // Left as it came: the verifier reports what is wrong with it.
        rim = undefined;
      }
      if (typeof rim === 'string') body = fromBase64(rim);
    }
  }
  const out = [{ name, bytes: body }];
  const headers = Object.fromEntries(Object.entries(r.item.headers).filter(([k]) => KEPT_HEADERS.test(k)));
  if (Object.keys(headers).length > 0) {
    out.push({ name: `${name}.headers.json`, bytes: utf8.encode(`${JSON.stringify(headers, null, 2)}\n`) });
  }
  return out;
}
