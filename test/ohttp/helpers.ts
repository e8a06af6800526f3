import { expect } from 'vitest';
import {
  type OhttpBackend,
  OhttpError,
  type OhttpErrorCode,
  webCryptoBackend,
} from '../../src/ohttp/index.js';
import { nodeBackend } from '../../src/ohttp/node.js';

/** Every backend, for `describe.each`: each must give the same bytes and the same refusals. */
export const BACKENDS: [string, OhttpBackend][] = [
  ['webcrypto', webCryptoBackend],
  ['node', nodeBackend],
];

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
