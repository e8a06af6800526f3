/**
 * `cloister verify EVIDENCE`: a thin shell over the attestation library. Detects the TEE kind (or takes
 * --tee), gathers collateral from --collateral DIR, then the evidence's own folder, then (only with
 * --online) the vendor services through an on-disk cache, runs the registered verifier, and prints the
 * claims, the status and every reason. Exit status: 0 affirming, 2 warning (or nothing judged),
 * 3 contraindicated, 1 when the evidence could not be verified at all, 64 for a flag of the wrong form.
 *
 * An NVIDIA GPU report can be given as NVIDIA's tools write it — the SPDM report (binary or hex) as the
 * evidence and its PEM certificate chain with --nvidia-certs — instead of the SDK's evidence JSON.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { type Command, CommanderError, Option } from 'commander';
import type { JWK } from 'jose';
import {
  type Appraisal,
  type AppraisalPolicy,
  AttestationError,
  type CollateralSource,
  detectKind,
  type EarStatus,
  isTeeKind,
  TEE_KINDS,
  type VerifierRegistry,
} from '../attest/types.js';
import { fromHex } from '../util/index.js';
import { collateralCacheDir } from './collateral-sources.js';
import { EXIT_USAGE, FlagError, type Output, readText, stdio, UsageError } from './io.js';

export interface VerifyCliOptions {
  tee?: string;
  collateral?: string;
  online?: boolean;
  cacheDir?: string;
  at?: string;
  policy?: string;
  reportData?: string;
  json?: boolean;
  earKey?: string;
  nvidiaCerts?: string;
}

const EXIT: Record<EarStatus, number> = { affirming: 0, warning: 2, none: 2, contraindicated: 3 };
export const EXIT_ERROR = 1;

const POLICY_FIELDS = ['referenceValues', 'allowDebug', 'acceptTcbStatus'];

/** Reads a JSON AppraisalPolicy, refusing unknown fields so that a typo cannot loosen the policy. */
export function parsePolicy(text: string, where: string): AppraisalPolicy {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`policy ${where} is not JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new UsageError(`policy ${where} must be a JSON object`);
  }
  const o = json as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !POLICY_FIELDS.includes(k));
  if (unknown.length > 0) {
    throw new UsageError(
      `policy ${where} has unknown field(s) ${unknown.join(', ')}; allowed: ${POLICY_FIELDS.join(', ')}`,
    );
  }
  const policy: AppraisalPolicy = {};
  if (o.referenceValues !== undefined) {
    const rv = o.referenceValues as Record<string, unknown>;
    if (typeof rv !== 'object' || rv === null || Array.isArray(rv)) {
      throw new UsageError(`policy ${where}: referenceValues must map claim names to lists of values`);
    }
    policy.referenceValues = {};
    for (const [claim, values] of Object.entries(rv)) {
      if (!Array.isArray(values) || !values.every((v) => typeof v === 'string')) {
        throw new UsageError(`policy ${where}: referenceValues.${claim} must be a list of strings`);
      }
      policy.referenceValues[claim] = values.map((v) => (/^[0-9a-fA-F]+$/.test(v) ? v.toLowerCase() : v));
    }
  }
  if (o.allowDebug !== undefined) {
    if (typeof o.allowDebug !== 'boolean')
      throw new UsageError(`policy ${where}: allowDebug must be true or false`);
    policy.allowDebug = o.allowDebug;
  }
  if (o.acceptTcbStatus !== undefined) {
    if (!Array.isArray(o.acceptTcbStatus) || !o.acceptTcbStatus.every((v) => typeof v === 'string')) {
      throw new UsageError(`policy ${where}: acceptTcbStatus must be a list of strings`);
    }
    policy.acceptTcbStatus = o.acceptTcbStatus;
  }
  return policy;
}

function parseAt(s: string | undefined): Date {
  if (s === undefined || s === 'now') return new Date();
  const d = new Date(s);
  if (Number.isNaN(d.getTime()))
    throw new FlagError(`--at ${s} is not a time (use ISO 8601, e.g. 2025-09-01T00:00:00Z)`);
  return d;
}

async function loadEarKey(file: string): Promise<CryptoKey> {
  const text = await readText(file, 'EAR key');
  const { importJWK, importPKCS8 } = await import('jose');
  try {
    if (text.trimStart().startsWith('{')) {
      const jwk = JSON.parse(text) as JWK;
      if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || jwk.d === undefined)
        throw new Error('need a P-256 private JWK');
      return (await importJWK(jwk, 'ES256')) as CryptoKey;
    }
    return await importPKCS8(text, 'ES256');
  } catch (e) {
    throw new UsageError(
      `EAR key ${file} is not an ES256 (P-256) private key as JWK or PKCS#8 PEM: ${(e as Error).message}`,
    );
  }
}

async function collateralFor(evidencePath: string, opts: VerifyCliOptions): Promise<CollateralSource> {
  const { chainSources, httpSource } = await import('../attest/index.js');
  const { cachedSource, directorySource } = await import('../attest/collateral/node.js');
  const sources: CollateralSource[] = [];
  if (opts.collateral) sources.push(directorySource(opts.collateral));
  sources.push(directorySource(path.dirname(path.resolve(evidencePath))));
  if (opts.online) sources.push(cachedSource(httpSource(), opts.cacheDir ?? collateralCacheDir()));
  else if (opts.cacheDir) sources.push(cachedSource(httpSource(), opts.cacheDir, { offline: true }));
  return chainSources(...sources);
}

const LABEL: Record<EarStatus, string> = {
  affirming: 'affirming',
  warning: 'warning',
  contraindicated: 'contraindicated',
  none: 'not judged',
};

function claimText(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function describe(name: string | undefined, a: Appraisal, lines: string[]): void {
  const indent = name ? '  ' : '';
  if (name) lines.push(`${name}:`);
  lines.push(
    `${indent}kind:   ${a.kind}${a.insecure ? '  (INSECURE: software-only TEE, never trust it with secrets)' : ''}`,
  );
  lines.push(`${indent}status: ${a.status}`);
  const tv = Object.entries(a.trustVector)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
  lines.push(`${indent}trust vector: ${tv || '(none)'}`);
  lines.push(`${indent}claims:`);
  for (const [k, v] of Object.entries(a.claims)) lines.push(`${indent}  ${k}: ${claimText(v)}`);
  lines.push(`${indent}findings:`);
  for (const f of a.findings) lines.push(`${indent}  [${LABEL[f.status]}] ${f.check}: ${f.message}`);
}

function policyNote(submods: Appraisal[], hasPolicy: boolean): string[] {
  if (hasPolicy) return [];
  const notJudged = submods.flatMap((a) => a.findings.filter((f) => f.status === 'none').map((f) => f.check));
  return [
    `note: no --policy given, so measurements were not compared with reference values` +
      (notJudged.length > 0 ? ` (not judged: ${[...new Set(notJudged)].join(', ')})` : '') +
      '. "affirming" would be a judgement of the platform only (genuine, up to date, not debug), not of the workload it runs.',
  ];
}

/** SPDM 1.1/1.2 GET_MEASUREMENTS request code: how a bare NVIDIA report starts. */
const isSpdm = (b: Uint8Array) => (b[0] === 0x11 || b[0] === 0x12) && b[1] === 0xe0;

/**
 * NVIDIA evidence JSON from the files NVIDIA's tools write: the report (binary, or hex with any white
 * space) and the PEM chain, leaf first. Their contents are checked by the verifier; only their shape here.
 */
async function nvidiaEvidenceFromFiles(
  reportPath: string,
  report: Uint8Array,
  certsPath: string,
): Promise<Uint8Array> {
  let spdm = report;
  if (!isSpdm(report)) {
    const text = new TextDecoder().decode(report).replace(/\s+/g, '');
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(text) || !isSpdm(fromHex(text))) {
      throw new UsageError(
        `${reportPath}: not an NVIDIA SPDM report (binary, or hex starting 11e0 / 12e0) as --nvidia-certs needs`,
      );
    }
    spdm = fromHex(text);
  }
  const chain = await readText(certsPath, '--nvidia-certs');
  if (!chain.includes('-----BEGIN CERTIFICATE-----')) {
    throw new UsageError(`${certsPath}: not a PEM certificate chain (--nvidia-certs)`);
  }
  const { encodeNvidiaEvidence } = await import('../attest/index.js');
  return encodeNvidiaEvidence({ report: spdm, certChain: new TextEncoder().encode(chain) });
}

/** Runs the verb; returns the exit code. Every failure is reported as one line on `err`. */
export async function runVerify(
  evidencePath: string,
  opts: VerifyCliOptions,
  io: Output,
  registry?: VerifierRegistry,
): Promise<number> {
  let kind: string | undefined;
  // The verifiers and their certificate libraries load here, when a verb needs them, not at start.
  const { appraiseComposite, decodeCompositeEvidence, isCompositeEvidence } = await import(
    '../attest/index.js'
  );
  const { issueEar } = await import('../attest/index.js');
  registry ??= (await import('../attest/index.js')).createDefaultRegistry();
  try {
    if (opts.tee !== undefined && !isTeeKind(opts.tee)) {
      throw new FlagError(`--tee ${opts.tee} is not a TEE kind (one of: ${TEE_KINDS.join(', ')})`);
    }
    let evidence: Uint8Array;
    try {
      evidence = new Uint8Array(await readFile(evidencePath));
    } catch (e) {
      throw new UsageError(`cannot read evidence ${evidencePath}: ${(e as Error).message}`);
    }
    if (opts.nvidiaCerts !== undefined) {
      if (opts.tee !== undefined && opts.tee !== 'nvidia')
        throw new UsageError(`--nvidia-certs is for an NVIDIA GPU report, not --tee ${opts.tee}`);
      evidence = await nvidiaEvidenceFromFiles(evidencePath, evidence, opts.nvidiaCerts);
    }
    const tee = opts.nvidiaCerts !== undefined ? 'nvidia' : opts.tee;
    let expectedReportData: Uint8Array | undefined;
    if (opts.reportData !== undefined) {
      try {
        expectedReportData = fromHex(opts.reportData.replace(/^0x/, ''));
      } catch {
        throw new FlagError(`--report-data must be hex, got ${JSON.stringify(opts.reportData)}`);
      }
    }
    const policy = opts.policy ? parsePolicy(await readText(opts.policy, 'policy'), opts.policy) : undefined;
    const options = {
      at: parseAt(opts.at),
      collateral: await collateralFor(evidencePath, opts),
      ...(policy ? { policy } : {}),
      ...(expectedReportData ? { expectedReportData } : {}),
    };
    const earKey = opts.earKey ? await loadEarKey(opts.earKey) : undefined;

    let submods: Record<string, Appraisal>;
    let status: EarStatus;
    if (tee === undefined && isCompositeEvidence(evidence)) {
      kind = 'composite';
      ({ submods, status } = await appraiseComposite(decodeCompositeEvidence(evidence), options, registry));
    } else {
      kind = tee ?? detectKind(evidence);
      if (kind === undefined) {
        throw new UsageError(
          `cannot tell the TEE kind of ${evidencePath}; name it with --tee (one of: ${TEE_KINDS.join(', ')})`,
        );
      }
      const a = await registry.get(kind as Appraisal['kind']).appraiseEvidence(evidence, options);
      submods = { [kind === 'nvidia' ? 'gpu0' : 'cpu0']: a };
      status = a.status;
    }
    const ear = earKey
      ? await issueEar(submods, {
          signingKey: earKey,
          build: 'cloister-cli',
          issuedAt: new Date(),
          ...(policy ? { policyId: `cloister:policy/file/${path.basename(opts.policy!)}` } : {}),
        })
      : undefined;

    const list = Object.values(submods);
    if (opts.json) {
      const single = list.length === 1 && kind !== 'composite' ? list[0]! : undefined;
      const doc = single
        ? {
            status,
            kind: single.kind,
            claims: single.claims,
            findings: single.findings,
            trustVector: single.trustVector,
            ...(single.insecure ? { insecure: true } : {}),
          }
        : { status, kind, submods };
      io.out(`${JSON.stringify({ ...doc, ...(ear ? { ear } : {}) }, null, 2)}\n`);
    } else {
      const lines = [`evidence: ${evidencePath}`];
      if (list.length === 1 && kind !== 'composite') describe(undefined, list[0]!, lines);
      else {
        lines.push(`kind:   composite (${list.map((a) => a.kind).join(' + ')})`);
        for (const [name, a] of Object.entries(submods)) describe(name, a, lines);
      }
      lines.push(`result: ${status.toUpperCase()}`);
      lines.push(...policyNote(list, policy !== undefined));
      if (ear) lines.push(`ear: ${ear}`);
      io.out(`${lines.join('\n')}\n`);
    }
    return EXIT[status];
  } catch (e) {
    let line: string;
    if (e instanceof AttestationError && e.code === 'missing-certificate-chain') {
      // The library speaks of JSON; a CLI user holding NVIDIA's hex + PEM files has a flag for them.
      line = `cloister verify: ${evidencePath} is a bare NVIDIA report: give its PEM certificate chain with --nvidia-certs FILE (or NVIDIA SDK evidence JSON) [${e.code}]`;
    } else if (e instanceof AttestationError) {
      line = `cloister verify: ${kind ?? 'evidence'} ${e.stage} failed [${e.code}]: ${e.message}`;
    } else if (e instanceof UsageError) {
      line = `cloister verify: ${e.message}`;
    } else {
      line = `cloister verify: unexpected failure: ${e instanceof Error ? e.message : String(e)}`;
    }
    io.err(`${line.replace(/\s*\n\s*/g, ' ')}\n`);
    if (opts.json) {
      const error =
        e instanceof AttestationError
          ? { stage: e.stage, code: e.code, message: e.message }
          : { message: (e as Error).message };
      io.out(`${JSON.stringify({ status: 'error', ...(kind ? { kind } : {}), error }, null, 2)}\n`);
    }
    return e instanceof FlagError ? EXIT_USAGE : EXIT_ERROR;
  }
}

const EXAMPLES = `
Examples:
  # software sample TEE (insecure by design: never better than a warning)
  cloister verify evidence.json --report-data 5a5a…
  # Intel TDX quote, offline, at a time its collateral is valid, with reference values
  cloister verify test/vectors/tdx/dcap-qvl_v4_b0c06f_uptodate/quote.bin \\
      --at 2025-07-01T00:00:00Z --policy policy.json --json
  # fetch missing collateral from the vendor services (cached on disk)
  cloister verify quote.bin --online
  # NVIDIA GPU: the SPDM report (hex or binary) and its PEM chain, as NVIDIA's tools write them;
  # RIMs are looked up in --collateral and beside the report (driver_rim.swidtag, vbios_rim.swidtag)
  cloister verify test/vectors/nvidia-gpu/nvtrust_hopper_545.00_complete/attestation_report.hex \
      --nvidia-certs test/vectors/nvidia-gpu/nvtrust_hopper_545.00_complete/cert_chain.pem \
      --at 2024-06-01T00:00:00Z

Policy file (JSON): {"referenceValues": {"measurement": ["ab…"]}, "allowDebug": false,
                     "acceptTcbStatus": ["UpToDate"]}

Exit status: 0 affirming, 2 warning (or nothing judged), 3 contraindicated,
             1 the evidence could not be verified (the reason is printed on one line),
             64 a flag is wrong (usage).
`;

export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description('verify TEE attestation evidence; print its claims, status and every reason')
    .argument(
      '<evidence>',
      'evidence file: quote, report, NVIDIA evidence JSON (or SPDM report with --nvidia-certs), JSON evidence or composite evidence',
    )
    .addOption(new Option('--tee <kind>', 'TEE kind instead of detecting it').choices([...TEE_KINDS]))
    .option('--collateral <dir>', 'folder with vendor collateral (searched before the evidence folder)')
    .option('--online', 'fetch collateral missing from the folders from the vendor services')
    .option(
      '--cache-dir <dir>',
      'collateral cache (default ~/.cache/cloister/collateral); offline unless --online',
    )
    .option('--at <time>', 'verification time, ISO 8601 (default now)')
    .option('--policy <file>', 'appraisal policy JSON (reference values, allowDebug, acceptTcbStatus)')
    .option(
      '--report-data <hex>',
      'report data the evidence must carry (zero-padded to 64 bytes; for an NVIDIA GPU, the requester nonce)',
    )
    .option(
      '--nvidia-certs <file>',
      "the evidence is an NVIDIA GPU's SPDM report (binary or hex) and this is its PEM certificate chain, leaf first",
    )
    .option('--json', 'print {status, kind, claims, findings, trustVector, ear?} as JSON')
    .option(
      '--ear-key <file>',
      'sign the result as an EAR JWT with this ES256 private key (JWK or PKCS#8 PEM)',
    )
    .addHelpText('after', EXAMPLES)
    .action(async (evidence: string, opts: VerifyCliOptions) => {
      const code = await runVerify(evidence, opts, stdio);
      // main() turns a CommanderError into the process exit code.
      if (code !== 0) throw new CommanderError(code, 'cloister.verify', '');
    });
}
