/**
 * `cloister collateral fetch`: fills an offline collateral folder — the layout `cloister verify
 * --collateral DIR` and the key broker's `collateral.dir` read — on a machine that has the internet.
 * What to fetch comes from flags (an Intel platform by FMSPC, an AMD product, NVIDIA RIM ids) or from
 * evidence files: each is verified online and whatever its verifier asked for is written, so a
 * quote, an SNP report or GPU evidence brings exactly the collateral it needs offline.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { type Command, CommanderError, Option } from 'commander';
import type { CollateralRequest, VendorSourceOptions } from '../attest/index.js';
import { type Output, stdio, UsageError } from './io.js';

/** One file name inside --out (an NVIDIA RIM id is one too): nothing that could leave the folder. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

export interface CollateralFetchOptions {
  out: string;
  evidence: string[];
  tee?: 'tdx' | 'sgx' | 'snp';
  fmspc: string[];
  product: string[];
  nvidiaRim: string[];
  pccs?: string;
  pcsApiKey?: string;
}

/** sysexits EX_USAGE: the flags were wrong, nothing was fetched. */
const EXIT_USAGE = 64;

const PRODUCTS = { milan: 'Milan', genoa: 'Genoa', turin: 'Turin' } as const;

/** The requests the flags name; evidence adds its own while it is verified. */
async function flagRequests(o: CollateralFetchOptions): Promise<CollateralRequest[]> {
  const { intelRequests, nvidiaRimRequest, snpProductRequests } = await import('../attest/index.js');
  const out: CollateralRequest[] = [];
  if (o.fmspc.length > 0 && o.tee !== 'tdx' && o.tee !== 'sgx')
    throw new UsageError('--fmspc names an Intel platform: give --tee tdx or --tee sgx with it');
  if (o.product.length > 0 && o.tee !== undefined && o.tee !== 'snp')
    throw new UsageError(`--product names an AMD SEV-SNP product, not a --tee ${o.tee} platform`);
  if ((o.tee === 'tdx' || o.tee === 'sgx') && o.fmspc.length === 0 && o.evidence.length === 0)
    throw new UsageError(`--tee ${o.tee} needs --fmspc HEX (or --evidence FILE holding a quote)`);
  if (o.tee === 'snp' && o.product.length === 0 && o.evidence.length === 0)
    throw new UsageError('--tee snp needs --product milan|genoa|turin (or --evidence FILE holding a report)');
  for (const f of o.fmspc) {
    if (!/^[0-9a-fA-F]{12}$/.test(f)) throw new UsageError(`--fmspc ${f} is not 6 bytes of hex (12 digits)`);
    out.push(...intelRequests(o.tee as 'tdx' | 'sgx', f.toLowerCase()));
  }
  for (const p of o.product) {
    const product = PRODUCTS[p.toLowerCase() as keyof typeof PRODUCTS];
    if (!product) throw new UsageError(`--product ${p} is not milan, genoa or turin`);
    out.push(...snpProductRequests(product));
  }
  for (const id of o.nvidiaRim) {
    // The id becomes a file name: nothing that could leave the folder.
    if (!SAFE_NAME.test(id)) throw new UsageError(`--nvidia-rim ${id} is not a RIM id`);
    out.push(nvidiaRimRequest(id));
  }
  return out;
}

async function writeAtomically(dir: string, name: string, bytes: Uint8Array): Promise<void> {
  if (!SAFE_NAME.test(name))
    throw new Error(`refusing to write collateral under the name ${JSON.stringify(name)}`);
  const file = path.join(dir, name);
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  // `wx`: a new file, never one planted at that name (a link elsewhere, in a shared folder).
  await writeFile(tmp, bytes, { flag: 'wx', mode: 0o644 });
  try {
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Runs the verb; returns the exit code: 0 when everything asked for was written, 1 when a vendor
 * could not be reached, had nothing for a flag's request, or evidence still lacks collateral, 64
 * (EX_USAGE) for bad flags.
 * `vendors` points the vendor services elsewhere (tests; --pccs sets Intel's).
 */
export async function runCollateralFetch(
  o: CollateralFetchOptions,
  io: Output,
  vendors: VendorSourceOptions = {},
): Promise<number> {
  const attest = await import('../attest/index.js');
  const { AttestationError, collateralFiles, recordingSource, vendorOf, vendorSource } = attest;
  const { describeInventory, inventoryCollateral } = await import('../attest/collateral/node.js');
  try {
    const requests = await flagRequests(o);
    if (requests.length === 0 && o.evidence.length === 0)
      throw new UsageError(
        'nothing to fetch: give --evidence FILE, --tee tdx|sgx --fmspc HEX, --tee snp --product NAME or --nvidia-rim ID',
      );
    const recorder = recordingSource(
      vendorSource({
        ...vendors,
        ...(o.pccs ? { intelPcsUrl: o.pccs } : {}),
        ...(o.pcsApiKey ? { pcsApiKey: o.pcsApiKey } : {}),
      }),
    );
    const problems: string[] = [];
    const wanted = new Set(requests.map((r) => r.url));
    await Promise.all(
      requests.map(async (r) => {
        try {
          await recorder.source.get(r);
        } catch (e) {
          problems.push(`${r.url}: ${(e as Error).message.split('\n')[0]}`);
        }
      }),
    );
    const registry = attest.createDefaultRegistry({ context: attest.createVerifierContext() });
    for (const file of o.evidence) {
      let evidence: Uint8Array;
      try {
        evidence = new Uint8Array(await readFile(file));
      } catch (e) {
        throw new UsageError(`${file}: cannot read evidence (${(e as Error).message})`);
      }
      const options = { at: new Date(), collateral: recorder.source };
      try {
        if (attest.isCompositeEvidence(evidence)) {
          await attest.appraiseComposite(attest.decodeCompositeEvidence(evidence), options, registry);
        } else {
          const kind = attest.detectKind(evidence);
          if (kind === undefined) throw new UsageError(`${file}: not evidence of a TEE kind Cloister knows`);
          await registry.get(kind).appraiseEvidence(evidence, options);
        }
      } catch (e) {
        if (!(e instanceof AttestationError)) throw e;
        // The collateral was what this verb is for: other refusals (an expired chain, say) are noted.
        const missing = e.code === 'collateral-missing' || e.code === 'collateral-unavailable';
        const line = `${file}: ${missing ? '' : 'fetched, but it does not verify now: '}[${e.code}] ${e.message.split('\n')[0]}`;
        if (missing) problems.push(line);
        else io.err(`note: ${line}\n`);
      }
    }
    for (const r of recorder.missing) {
      if (wanted.has(r.url)) problems.push(`${r.url}: ${vendorOf(r.url)} has no such item`);
    }

    await mkdir(o.out, { recursive: true });
    const written: string[] = [];
    for (const [, rec] of [...recorder.found].sort(([a], [b]) => a.localeCompare(b))) {
      for (const f of collateralFiles(rec)) {
        await writeAtomically(o.out, f.name, f.bytes);
        written.push(f.name);
      }
      io.out(
        `${path.join(o.out, rec.request.files[0]!)}  (${vendorOf(rec.request.url)}: ${rec.request.url})\n`,
      );
    }
    io.out(`${o.out} now holds: ${describeInventory(await inventoryCollateral(o.out))}\n`);
    for (const p of problems) io.err(`cloister collateral fetch: ${p}\n`);
    return problems.length > 0 || written.length === 0 ? 1 : 0;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    io.err(`cloister collateral fetch: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
    return e instanceof UsageError ? EXIT_USAGE : 1;
  }
}

const collect = (v: string, prev: string[]) => [...prev, v];

export function registerCollateral(program: Command): void {
  const collateral = program
    .command('collateral')
    .description('vendor collateral (Intel PCS, AMD KDS, NVIDIA RIMs) for offline verification');
  collateral
    .command('fetch')
    .description(
      "fetch collateral from the vendor services into a folder for `verify --collateral` and the broker's collateral.dir",
    )
    .requiredOption('--out <dir>', 'the collateral folder to fill (made if missing; items are replaced)')
    .option(
      '--evidence <file>',
      'evidence (quote, SNP report, GPU or composite evidence) whose collateral to fetch; repeatable',
      collect,
      [],
    )
    .addOption(
      new Option('--tee <kind>', 'the platform kind --fmspc / --product name').choices(['tdx', 'sgx', 'snp']),
    )
    .option(
      '--fmspc <hex>',
      'an Intel platform (6 bytes hex, from `cloister verify` claims): TCB info, QE identity, CRLs; repeatable',
      collect,
      [],
    )
    .option(
      '--product <name>',
      'an AMD SEV-SNP product (milan, genoa, turin): ARK CRL and ASK/ARK chain; repeatable',
      collect,
      [],
    )
    .option(
      '--nvidia-rim <id>',
      'an NVIDIA RIM id, e.g. NV_GPU_DRIVER_GH100_550.144.03; repeatable',
      collect,
      [],
    )
    .option('--pccs <url>', 'a PCCS to ask instead of Intel PCS (same v4 API)')
    // From the environment too, so the key need not sit in the process list.
    .addOption(
      new Option('--pcs-api-key <key>', 'Intel PCS subscription key, when your deployment needs one').env(
        'CLOISTER_PCS_API_KEY',
      ),
    )
    .addHelpText(
      'after',
      `
Examples:
  cloister collateral fetch --out collateral/ --evidence quote.bin --evidence report.bin
  cloister collateral fetch --out collateral/ --tee tdx --fmspc b0c06f000000 --fmspc 90c06f000000
  cloister collateral fetch --out collateral/ --tee snp --product milan --product genoa

Evidence brings exactly what its verifier needs (an SNP report its chip's VCEK; GPU evidence its RIMs);
flags bring what a platform shares. Exit status: 0 all written, 1 a vendor was unreachable or had
nothing for a request (each named on one line), 64 bad flags.`,
    )
    .action(async (opts: CollateralFetchOptions) => {
      const code = await runCollateralFetch(opts, stdio);
      if (code !== 0) throw new CommanderError(code, 'cloister.collateral.fetch', '');
    });
}
