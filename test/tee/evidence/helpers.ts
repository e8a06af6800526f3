import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AgentFs } from '../../../src/tee/evidence/fs.js';
import { nodeFs } from '../../../src/tee/evidence/node.js';

export function tempDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'cloister-agent-'));
}

/** Paths under `root` go to `inner` (a fake kernel), everything else to the real file system. */
export function routeFs(root: string, inner: AgentFs, rest: AgentFs = nodeFs): AgentFs {
  const pick = (p: string) => (p === root || p.startsWith(`${root}/`) ? inner : rest);
  return {
    readFile: (p) => pick(p).readFile(p),
    writeFile: (p, d) => pick(p).writeFile(p, d),
    mkdir: (p) => pick(p).mkdir(p),
    rmdir: (p) => pick(p).rmdir(p),
    readdir: (p) => pick(p).readdir(p),
    exists: (p) => pick(p).exists(p),
  };
}

/** An SGX DCAP quote v3 shape (not signed) carrying `reportData` at byte 368. */
export function sgxQuote(reportData: Uint8Array): Uint8Array {
  const q = new Uint8Array(1020);
  const dv = new DataView(q.buffer);
  dv.setUint16(0, 3, true);
  dv.setUint16(2, 2, true);
  dv.setUint32(4, 0, true);
  q.set(reportData, 368);
  return q;
}

/** A folder laid out like Gramine's /dev/attestation, with a quote answering `reportData`. */
export function gramineDir(type: string, reportData?: Uint8Array): string {
  const dir = path.join(tempDir(), 'attestation');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'attestation_type'), type);
  if (reportData) writeFileSync(path.join(dir, 'quote'), sgxQuote(reportData));
  return dir;
}

/** A device folder with the given node names (plain files stand in for device nodes). */
export function devDir(...names: string[]): string {
  const dir = path.join(tempDir(), 'dev');
  mkdirSync(dir);
  for (const n of names) writeFileSync(path.join(dir, n), '');
  return dir;
}

/** A real GPU evidence entry as NVIDIA's SDK serialises it (test/vectors). */
export const VECTOR_ENTRY = JSON.parse(
  readFileSync('test/vectors/nvidia-gpu/nvat-sdk_hopper_590.12_evidence/hopper_evidence.json', 'utf8'),
)[0] as { arch: string; nonce: string; evidence: string; certificate: string };
