import { describe, expect, it } from 'vitest';
import { EngineError } from '../../src/infer/engine/types.js';
import {
  errorResponse,
  INFER_STATUS,
  type InferCode,
  InferError,
  toInferError,
} from '../../src/infer/errors.js';
import { GatewayError } from '../../src/infer/gateway.js';

describe('InferError: a code, and one table for its status', () => {
  it('reads its status from INFER_STATUS and names the OpenAI error type after it', () => {
    const cases: [InferCode, number, string][] = [
      ['invalid_json', 400, 'invalid_request_error'],
      ['model_not_found', 404, 'invalid_request_error'],
      ['queue_full', 429, 'rate_limit_error'],
      ['engine_failed', 500, 'server_error'],
      ['collateral_unreachable', 502, 'server_error'],
    ];
    for (const [code, status, type] of cases) {
      const e = new InferError(code, 'm');
      expect([e.status, e.type], code).toEqual([status, type]);
      expect(INFER_STATUS[code]).toBe(status);
    }
    expect(new GatewayError('ohttp_key', 'stale').status).toBe(422);
  });

  it('maps engine refusals by their code (EngineCode is closed; the compiler refuses a code the map lacks)', () => {
    expect(toInferError(new EngineError('prompt-too-long', 'too long'))).toMatchObject({
      code: 'prompt_too_long',
      status: 400,
      message: 'too long',
    });
    expect(toInferError(new EngineError('engine-closed', 'closed'))).toMatchObject({
      code: 'engine_closed',
      status: 500,
    });
    expect(toInferError(new EngineError('bad-model', 'x'))).toMatchObject({ code: 'bad_model', status: 500 });
    expect(toInferError(new EngineError('aborted', 'x'))).toMatchObject({ code: 'aborted', status: 400 });
  });

  it('anything else is a 500 that does not pass its message on', async () => {
    const e = toInferError(new Error('secret path /dev/shm/x'));
    expect([e.code, e.status]).toEqual(['internal_error', 500]);
    const res = errorResponse(e);
    expect(res.status).toBe(500);
    expect(await res.text()).not.toContain('secret');
  });

  it('a 429 tells the client when to retry', () => {
    expect(errorResponse(new InferError('queue_full', 'busy')).headers.get('retry-after')).toBe('1');
    expect(errorResponse(new InferError('not_found', 'no')).headers.get('retry-after')).toBeNull();
  });
});
