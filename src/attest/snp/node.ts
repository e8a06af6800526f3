/**
 * Node-only: a CollateralSource over local folders, for offline verification with the file names
 * AMD collateral has in test/vectors (vcek.der, vcek.pem, vlek.der, cert_chain.pem, crl.der, ...).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CollateralSource } from '../common/types.js';

/** Serves the first listed file found, searching the folders in order; undefined when none exists. */
export function folderCollateral(...dirs: string[]): CollateralSource {
  return {
    async get(req) {
      for (const dir of dirs) {
        for (const name of req.files) {
          try {
            const body = new Uint8Array(await readFile(join(dir, name)));
            return { body, headers: {} };
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          }
        }
      }
      return undefined;
    },
  };
}
