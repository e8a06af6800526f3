import { expect } from 'vitest';
import { OhttpError, type OhttpErrorCode } from '../../src/ohttp/index.js';

export async function expectCode(p: Promise<unknown> | (() => unknown), code: OhttpErrorCode): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(OhttpError);
  expect((err as OhttpError).code).toBe(code);
}
