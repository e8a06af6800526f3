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

/** Wraps `backend` to count calls per method: interoperable backends cannot show which one ran otherwise. */
export function counting(backend: OhttpBackend): { backend: OhttpBackend; calls: Record<string, number> } {
  const calls: Record<string, number> = {};
  const wrapped = { ...backend } as Record<string, unknown>;
  for (const [name, f] of Object.entries(backend)) {
    if (typeof f !== 'function') continue;
    wrapped[name] = (...args: unknown[]) => {
      calls[name] = (calls[name] ?? 0) + 1;
      return (f as (...a: unknown[]) => unknown).apply(backend, args);
    };
  }
  return { backend: wrapped as unknown as OhttpBackend, calls };
}
