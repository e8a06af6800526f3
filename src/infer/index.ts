/**
 * Confidential inference, web-standard parts (`cloister/infer`): the OpenAI-compatible handler, the
 * Oblivious HTTP gateway in front of it, the attested identity, per-response receipts and the serving
 * keys replicas share. The Node server (server.ts), the engines (engine/), model loading (load.ts) and
 * the Redis replay guard (replay-redis.ts) sit at the edges.
 */

// The attested identity and the response receipts are wire formats (src/wire); clients of the
// inference API find them here too.
export {
  type AdapterIdentity,
  ATTESTATION_TYPE,
  type AttestationDocument,
  IDENTITY_TYPE,
  type InferenceIdentity,
  identityReportData,
  MODEL_DIGEST_HEADER,
  type ModelIdentity,
  RECEIPT_HEADER,
  RESPONSE_RECEIPT_TYP,
  RESPONSE_RECEIPT_TYPE,
  ReceiptError,
  type ResponseReceipt,
  type SoftwareIdentity,
  sha256Label,
  signResponseReceipt,
  verifyResponseReceipt,
} from '../wire/index.js';
export * from './engine/types.js';
export * from './errors.js';
export * from './gateway.js';
export * from './openai.js';
export * from './queue.js';
export * from './serving-keys.js';
