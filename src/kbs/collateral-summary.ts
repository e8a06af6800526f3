/**
 * The line a broker logs at start about its collateral: which folder, what it holds per vendor, and
 * what evidence it will therefore refuse offline — so that a broker missing its Intel or AMD collateral
 * says so when it starts, not at the first attestation.
 */
import { describeInventory, inventoryCollateral } from '../attest/collateral/node.js';
import type { KbsConfig } from './config.js';

/** One line: `collateral: dir collateral/ — Intel PCS: …; AMD KDS: …; NVIDIA RIMs: …[; online …]`. */
export async function collateralSummary(c: KbsConfig['collateral']): Promise<string> {
  const online = c.online
    ? `online: what the folder lacks is fetched from Intel PCS, AMD KDS and NVIDIA${c.cacheDir ? ` (cached in ${c.cacheDir})` : ''}`
    : c.cacheDir
      ? `offline, also reading the cache ${c.cacheDir}`
      : 'offline';
  if (!c.dir) {
    return c.online
      ? `collateral: no dir; ${online}`
      : `collateral: none (no dir, ${online}): TDX/SGX evidence, and SNP evidence without its VCEK, will be refused; fill a folder with \`cloister collateral fetch\` and set collateral.dir, or set collateral.online`;
  }
  const inv = await inventoryCollateral(c.dir);
  if (!inv.exists)
    return `collateral: dir ${c.dir} DOES NOT EXIST (${online}): fill it with \`cloister collateral fetch --out ${c.dir}\``;
  return `collateral: dir ${c.dir} — ${describeInventory(inv)}; ${online}`;
}
