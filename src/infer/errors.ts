/**
 * Refusals of the inference server, in the OpenAI error shape so that OpenAI clients show them as
 * they show OpenAI's own: `{"error": {"message", "type", "param", "code"}}`.
 *
 * Code below the edge throws an InferError with a `code` from the closed union InferCode and never
 * picks an HTTP status; INFER_STATUS is the one code → status table. It lives here, beside
 * errorResponse, because the module has two edges that must agree: the Node server (server.ts) and the
 * web-standard OpenAI handler, which also answers inside the OHTTP encryption where no Node server is.
 */
import type { StatusTable } from '../http/index.js';
import { type EngineCode, EngineError } from './engine/types.js';

/** Every refusal the inference module can give; stable, for clients and tests. */
export type InferCode =
  // the OpenAI API (openai.ts)
  | 'invalid_request'
  | 'invalid_json'
  | 'wrong_model_kind'
  | 'model_not_found'
  | 'method_not_allowed'
  | 'not_found'
  // queues (queue.ts)
  | 'client_closed'
  | 'queue_full'
  // engines (EngineError codes, with `_` for `-`)
  | 'aborted'
  | 'bad_model'
  | 'bad_request'
  | 'engine_closed'
  | 'engine_failed'
  | 'prompt_too_long'
  // the HTTP edge (server.ts)
  | 'body_too_large'
  | 'bad_nonce'
  | 'bad_url'
  | 'collateral_unreachable'
  | 'collateral_too_large'
  | 'plaintext_disabled'
  | 'internal_error'
  // the OHTTP gateway (gateway.ts): problem documents rather than OpenAI errors
  | 'bad_content_type'
  | 'bad_ohttp'
  | 'ohttp_key'
  | 'replay'
  | 'replay_cache_full'
  | 'replay_store_unavailable'
  | 'date_required'
  | 'date_out_of_window'
  | 'bad_inner_request'
  | 'expectation_failed';

/** The one code → status table of the inference module. */
export const INFER_STATUS = {
  invalid_request: 400,
  invalid_json: 400,
  wrong_model_kind: 400,
  model_not_found: 404,
  method_not_allowed: 405,
  not_found: 404,
  // nginx's "client closed request": nobody reads it, but logs and receipts tell it from a refusal.
  client_closed: 499,
  queue_full: 429,
  aborted: 400,
  bad_model: 500,
  bad_request: 400,
  engine_closed: 500,
  engine_failed: 500,
  prompt_too_long: 400,
  body_too_large: 413,
  bad_nonce: 400,
  bad_url: 400,
  collateral_unreachable: 502,
  collateral_too_large: 502,
  plaintext_disabled: 403,
  internal_error: 500,
  bad_content_type: 415,
  bad_ohttp: 400,
  // RFC 9458 §5.3 leaves the status open; 422 tells a stale key configuration from a malformed request.
  ohttp_key: 422,
  replay: 400,
  replay_cache_full: 503,
  replay_store_unavailable: 503,
  date_required: 400,
  date_out_of_window: 400,
  bad_inner_request: 400,
  expectation_failed: 417,
} as const satisfies StatusTable<InferCode>;

export class InferError extends Error {
  override name = 'InferError';
  constructor(
    readonly code: InferCode,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }

  /** The status INFER_STATUS gives this code (read, never chosen, by the code that throws). */
  get status(): number {
    return INFER_STATUS[this.code];
  }

  get type(): string {
    if (this.status === 429) return 'rate_limit_error';
    if (this.status >= 500) return 'server_error';
    return 'invalid_request_error';
  }
}

const ENGINE_CODES: Readonly<Record<EngineCode, InferCode>> = {
  aborted: 'aborted',
  'bad-model': 'bad_model',
  'bad-request': 'bad_request',
  'engine-closed': 'engine_closed',
  'engine-failed': 'engine_failed',
  'prompt-too-long': 'prompt_too_long',
};

/** Maps anything thrown while serving a request onto an InferError; unknown failures become 500s. */
export function toInferError(e: unknown): InferError {
  if (e instanceof InferError) return e;
  if (e instanceof EngineError) {
    return new InferError(ENGINE_CODES[e.code], e.message);
  }
  return new InferError('internal_error', 'the server failed to handle this request');
}

export function errorBody(e: InferError): {
  error: { message: string; type: string; param: string | null; code: string };
} {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** Headers every refusal with this status carries. */
export function errorHeaders(e: InferError): Record<string, string> {
  return e.status === 429 ? { 'retry-after': '1' } : {};
}

export function errorResponse(e: InferError): Response {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...errorHeaders(e) };
  return new Response(JSON.stringify(errorBody(e)), { status: e.status, headers });
}
