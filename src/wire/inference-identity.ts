/**
 * What a confidential inference server attests to (docs/confidential-inference.md, "Attestation").
 *
 * The server makes its Oblivious HTTP key pair and its receipt signing key inside the TEE, then asks
 * the TEE for evidence whose report data is
 *
 *   SHA-512( "cloister-inference/v1\n" ‖ JCS(identity) )
 *
 * where `identity` names the OHTTP key configurations, the receipt key, every served model by the
 * SHA-256 of its sealed file (and of each LoRA adapter applied to it), and the server software. A client that verifies the evidence and
 * recomputes this hash knows that the keys it encrypts to and checks receipts against live in that
 * TEE, next to exactly those models, run by that software. Web-standard.
 */
import type { JWK } from 'jose';
import { canonicalizeBytes, concatBytes, utf8 } from '../util/index.js';

export const IDENTITY_TYPE = 'cloister-inference/v1';
export const ATTESTATION_TYPE = 'cloister-inference-attestation/v1';
const LABEL = utf8.encode(`${IDENTITY_TYPE}\n`);

export interface ModelIdentity {
  id: string;
  /** `sha256:<hex>` of the sealed model file. */
  digest: string;
  format: 'gguf' | 'onnx-bundle';
  /**
   * LoRA adapters llama.cpp applies on top of the model, in load order; absent when none. They change
   * the weights as much as another model would, so they are bound here beside the base's digest.
   */
  adapters?: AdapterIdentity[];
}

export interface AdapterIdentity {
  /** `sha256:<hex>` of the sealed adapter file (a GGUF LoRA adapter). */
  digest: string;
  /** The scale it is loaded with (llama.cpp multiplies it by the adapter's alpha / rank). */
  scale: number;
}

export interface SoftwareIdentity {
  name: 'cloister';
  version: string;
  /** `sha256:<hex>` over the server's code (see softwareIdentity in src/tee/software.ts). */
  digest: string;
}

export interface InferenceIdentity {
  type: typeof IDENTITY_TYPE;
  /** RFC 9458 key configuration list (application/ohttp-keys), base64url. */
  ohttpKeys: string;
  /** ES256 public key that signs per-response receipts. */
  receiptKey: JWK;
  models: ModelIdentity[];
  software: SoftwareIdentity;
  /** Whether the operator also lets plaintext requests in (they bypass end-to-end encryption). */
  plaintextAllowed: boolean;
  /**
   * Where the OHTTP and receipt keys came from when replicas share them (`kbs:///…`, or `file:…` in
   * development); absent when this TEE made them. Clients accept shared keys only from sources their
   * policy names.
   */
  sharedKeys?: string;
  /** A client's freshness nonce (hex) when the evidence was collected for one. */
  nonce?: string;
}

/** The 64 bytes of report data binding `identity`. */
export async function identityReportData(identity: InferenceIdentity): Promise<Uint8Array> {
  const msg = concatBytes(LABEL, canonicalizeBytes(identity));
  return new Uint8Array(await crypto.subtle.digest('SHA-512', msg.slice()));
}

/** `GET /v1/attestation`: everything a client needs to decide whether to talk to this server. */
export interface AttestationDocument {
  type: typeof ATTESTATION_TYPE;
  identity: InferenceIdentity;
  evidence: {
    /** CPU TEE kind: tdx, snp, sgx or sample. */
    kind: string;
    /** The TEE's evidence, base64url. */
    evidence: string;
    /** SEV-SNP certificate table from the host, base64url. */
    auxblob?: string;
    /** Confidential GPUs' evidence, base64url; GPU i answered deriveGpuNonce(report data, i). */
    gpus: string[];
  };
  /** The key broker's EAR token from the attestation that released the model key; null without one. */
  ear: string | null;
}
