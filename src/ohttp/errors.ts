/** Every refusal of the ohttp layer carries a stable `code` so callers can map it to an HTTP status. */
export type OhttpErrorCode =
  | 'truncated'
  | 'trailing-bytes'
  | 'bad-varint'
  | 'bad-framing'
  | 'bad-status'
  | 'bad-message'
  | 'bad-key-config'
  | 'unsupported-kem'
  | 'unsupported-kdf'
  | 'unsupported-aead'
  | 'unknown-key-id'
  | 'bad-key'
  | 'decrypt-failed'
  | 'chunk-truncated'
  | 'replay'
  | 'stale-date'
  | 'replay-cache-full'
  | 'replay-store-unavailable';

export class OhttpError extends Error {
  override name = 'OhttpError';
  constructor(
    readonly code: OhttpErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** RFC 9458 §6.5.2: the request's Date is missing or not acceptable. */
export const DATE_PROBLEM = 'https://iana.org/assignments/http-problem-types#date';
/** RFC 9458 §5.3: the request names a key or algorithms the gateway does not have. */
export const OHTTP_KEY_PROBLEM = 'https://iana.org/assignments/http-problem-types#ohttp-key';
