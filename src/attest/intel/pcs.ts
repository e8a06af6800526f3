/**
 * Online collateral: Intel PCS v4, or a PCCS caching service that serves the same API under its own
 * base URL. Web-standard fetch only, so it runs in browsers too; response headers are handed on with
 * lower-case names (Intel sends the issuer chains there).
 */
import type { CollateralItem, CollateralSource } from '../common/types.js';
import { PCS_BASE, ROOT_CA_CRL_URL } from './collateral.js';

export interface PcsOptions {
  /** A PCCS base URL (e.g. https://pccs.example:8081) instead of Intel PCS. */
  baseUrl?: string;
  /** Defaults to globalThis.fetch. */
  fetch?: typeof fetch;
  /** Intel PCS subscription key, when the deployment has one. */
  apiKey?: string;
}

/** 404 means "Intel has no such item" (e.g. unknown FMSPC): undefined, so verification reports it missing. */
export function pcsCollateral(options: PcsOptions = {}): CollateralSource {
  const doFetch = options.fetch ?? globalThis.fetch;
  const base = options.baseUrl?.replace(/\/+$/, '');
  return {
    async get(req): Promise<CollateralItem | undefined> {
      let url = req.url;
      if (base) {
        // A PCCS serves the root CA CRL itself (rootcacrl), and everything else under the same paths.
        url =
          url === ROOT_CA_CRL_URL ? `${base}/sgx/certification/v4/rootcacrl` : url.replace(PCS_BASE, base);
      }
      const res = await doFetch(url, {
        headers: options.apiKey ? { 'Ocp-Apim-Subscription-Key': options.apiKey } : {},
      });
      if (res.status === 404) return undefined;
      if (!res.ok) throw new Error(`HTTP ${res.status} from ${url}`);
      const headers: Record<string, string> = {};
      res.headers.forEach((v, k) => {
        headers[k.toLowerCase()] = v;
      });
      return { body: new Uint8Array(await res.arrayBuffer()), headers };
    },
  };
}
