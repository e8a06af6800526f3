/**
 * Node-only: a CollateralSource over local folders, for offline verification with the file names
 * Intel collateral has in test/vectors (tcb_info.json, qe_identity.json, pck_crl.der, root_ca_crl.der,
 * *_issuer_chain.pem, or one dcap-qvl collateral.json).
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
            return { body: new Uint8Array(await readFile(join(dir, name))), headers: {} };
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          }
        }
      }
      return undefined;
    },
  };
}
