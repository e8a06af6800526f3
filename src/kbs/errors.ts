/**
 * The key broker's refusals, by the problem `type` a caller sees. The broker and the admin API throw
 * KbsError (the protocol parsers in src/wire/kbs.ts throw ProtocolError, whose codes are part of this
 * union); no HTTP status is chosen here: server.ts maps every code to one in a single table.
 */
import type { FrameworkCode, RouteDoc } from '../http/index.js';
import type { ProtocolErrorCode } from '../wire/index.js';

export type KbsErrorCode =
  | ProtocolErrorCode
  // The KBS protocol's session, attestation and release refusals (what a TEE sees).
  | 'bad-init-data'
  | 'no-session'
  | 'unknown-session'
  | 'session-expired'
  | 'nonce-used'
  | 'nonce-mismatch'
  | 'attestation-report-data-mismatch'
  | 'attestation-refused'
  | 'not-attested'
  | 'token-expired'
  | 'bearer-disabled'
  | 'bad-token'
  | 'denied'
  // Confidential training (train.ts): the job id, the session's job, the checkpoint held, the receipt,
  // a recipient's key the session could not get, the job's one receipt.
  | 'bad-job'
  | 'job-not-bound'
  | 'no-checkpoint'
  | 'checkpoint-conflict'
  | 'bad-receipt'
  | 'recipient-denied'
  | 'receipt-exists'
  // The admin API's.
  | 'no-admin-token'
  | 'bad-admin-token'
  | 'forbidden'
  | 'unknown-resource'
  | 'bad-scope'
  | 'bad-policy'
  | 'bad-request'
  | 'bad-ear-token'
  | 'bad-tenant'
  | 'bad-refvalue'
  | 'bad-revocation'
  | 'bad-range'
  | 'unsupported-media-type'
  | 'empty-value'
  | 'value-too-large';

export class KbsError extends Error {
  override name = 'KbsError';
  /**
   * The problem `type`: the code, except for `attestation-refused`, whose type names the verifier's own
   * code (`attestation-<code>`, e.g. attestation-gpu-not-bound) so an operator sees why.
   */
  readonly type: string;
  constructor(
    readonly code: KbsErrorCode,
    message: string,
    o: { type?: string } = {},
  ) {
    super(message);
    this.type = o.type ?? code;
  }
}

/** Refusals made at the HTTP edge (server.ts) rather than by the broker's logic. */
export type KbsEdgeCode =
  | 'rate-limited'
  | 'no-route'
  | 'not-found'
  | 'conflict'
  | 'store-unavailable'
  | 'store-outcome-unknown'
  | 'not-ready'
  | 'internal';

/** Every problem code the broker's HTTP edge answers with: the keys of its status table. */
export type KbsHttpCode = KbsErrorCode | KbsEdgeCode | FrameworkCode;

/** What a broker route tells /openapi.json (src/http RouteDoc) in the broker's codes. */
export type KbsRouteDoc = RouteDoc<KbsHttpCode>;
