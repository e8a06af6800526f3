import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import type { CollateralSource, VerifyOptions } from '../../../src/attest/common/types.js';
import { fromHex, utf8 } from '../../../src/util/bytes.js';

export const VECTORS = join(import.meta.dirname, '../../vectors/nvidia-gpu');

export function vector(path: string): Uint8Array {
  return new Uint8Array(readFileSync(join(VECTORS, path)));
}

export function vectorText(path: string): string {
  return readFileSync(join(VECTORS, path), 'utf8');
}

export function reportBytes(folder: string): Uint8Array {
  return fromHex(vectorText(`${folder}/attestation_report.hex`));
}

/** NVIDIA SDK-shaped evidence for a vector folder, optionally with Cloister's extra fields. */
export function envelope(folder: string, extra: Record<string, unknown> = {}): Uint8Array {
  return utf8.encode(
    JSON.stringify({
      evidence: btoa(String.fromCharCode(...reportBytes(folder))),
      certificate: btoa(vectorText(`${folder}/cert_chain.pem`)),
      ...extra,
    }),
  );
}

export const noCollateral: CollateralSource = { get: async () => undefined };

/** An offline collateral folder: the first listed file name that exists is returned. */
export function folderSource(folder: string): CollateralSource {
  return {
    get: async (req) => {
      for (const f of req.files) {
        try {
          return { body: new Uint8Array(readFileSync(join(VECTORS, folder, f))), headers: {} };
        } catch {
          // try the next name
        }
      }
      return undefined;
    },
  };
}

export function options(at: string, extra: Partial<VerifyOptions> = {}): VerifyOptions {
  return { at: new Date(at), collateral: noCollateral, ...extra };
}

/** A mutation: flip bits, overwrite a run, cut, or insert, at arbitrary offsets. */
export function mutation(length: number) {
  return fc.oneof(
    fc.record({
      kind: fc.constant('flip' as const),
      at: fc.nat(length - 1),
      mask: fc.integer({ min: 1, max: 255 }),
    }),
    fc.record({ kind: fc.constant('cut' as const), at: fc.nat(length - 1) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(length), byte: fc.nat(255) }),
    fc.record({
      kind: fc.constant('set' as const),
      at: fc.nat(length - 1),
      bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }),
    }),
  );
}

export type Mutation =
  | { kind: 'flip'; at: number; mask: number }
  | { kind: 'cut'; at: number }
  | { kind: 'insert'; at: number; byte: number }
  | { kind: 'set'; at: number; bytes: Uint8Array };

export function apply(b: Uint8Array, m: Mutation): Uint8Array {
  switch (m.kind) {
    case 'flip': {
      const c = b.slice();
      c[m.at]! ^= m.mask;
      return c;
    }
    case 'cut':
      return b.subarray(0, m.at);
    case 'insert': {
      const c = new Uint8Array(b.length + 1);
      c.set(b.subarray(0, m.at));
      c[m.at] = m.byte;
      c.set(b.subarray(m.at), m.at + 1);
      return c;
    }
    case 'set': {
      const c = b.slice();
      c.set(m.bytes.subarray(0, c.length - m.at), m.at);
      return c;
    }
  }
}
