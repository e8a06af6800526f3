/**
 * Cloister's confidential inference client (`cloister/client`), Node and browsers: verify a server's
 * attestation against your own policy, then talk to it through Oblivious HTTP with `confidentialFetch`.
 */
export type { AttestationDocument, InferenceIdentity } from '../wire/index.js';
export { ReceiptError, type ResponseReceipt, verifyResponseReceipt } from '../wire/index.js';
export {
  type ConfidentialFetch,
  type ConfidentialFetchOptions,
  confidentialFetch,
  isRefusal,
  REFUSAL_TYPE,
} from './fetch.js';
export {
  type AdapterPin,
  type ClientPolicy,
  DEFAULT_CLIENT_POLICY,
  PolicyFileError,
  parseAdapterPin,
  parseClientPolicy,
} from './policy.js';
export {
  adapterRefusal,
  allowedModel,
  VerificationError,
  type VerifiedServer,
  type VerifyServerOptions,
  verifyServer,
} from './verify.js';
