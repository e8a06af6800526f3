import { readFileSync } from 'node:fs';
import { join } from 'node:path';
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

/** The Cloister evidence envelope for a vector folder, optionally with RIMs and a CC mode. */
export function envelope(folder: string, extra: Record<string, string> = {}): Uint8Array {
  return utf8.encode(
    JSON.stringify({
      report: vectorText(`${folder}/attestation_report.hex`).trim(),
      certChain: vectorText(`${folder}/cert_chain.pem`),
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
