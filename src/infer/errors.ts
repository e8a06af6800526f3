/**
 * Refusals of the inference server, in the OpenAI error shape so that OpenAI clients show them as
 * they show OpenAI's own: `{"error": {"message", "type", "param", "code"}}`.
 */
import { EngineError } from './engine/types.js';

export class InferError extends Error {
  override name = 'InferError';
  constructor(
    readonly status: number,
    /** Stable: `model_not_found`, `prompt_too_long`, `queue_full`, `bad_ohttp`, … */
    readonly code: string,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }

  get type(): string {
    if (this.status === 429) return 'rate_limit_error';
    if (this.status >= 500) return 'server_error';
    return 'invalid_request_error';
  }
}

/** Maps anything thrown while serving a request onto an InferError; unknown failures become 500s. */
export function toInferError(e: unknown): InferError {
  if (e instanceof InferError) return e;
  if (e instanceof EngineError) return new InferError(e.status, e.code.replaceAll('-', '_'), e.message);
  return new InferError(500, 'internal_error', 'the server failed to handle this request');
}

export function errorBody(e: InferError): {
  error: { message: string; type: string; param: string | null; code: string };
} {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

export function errorResponse(e: InferError): Response {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (e.status === 429) headers['retry-after'] = '1';
  return new Response(JSON.stringify(errorBody(e)), { status: e.status, headers });
}
