/**
 * `cloister receipt …`: attested receipts (in-toto Statements in DSSE, src/tee/attested-receipt.ts).
 * `receipt verify` checks any of them offline — signature, key binding, TEE evidence, with a broker key
 * the EAR token, for training receipts the predicate too — and, with `--policy`, a CEL expression over
 * the verified receipt. `receipt report` turns a training receipt and its metrics into an HTML page.
 * The machinery loads inside the actions, so that `cloister --help` stays light.
 */
import path from 'node:path';
import { type Command, CommanderError, Option } from 'commander';
import type { EarResult } from '../attest/index.js';
import type { Appraisal, EarStatus } from '../attest/types.js';
import type { InTotoStatement } from '../wire/index.js';
import { collateralSources } from './collateral-sources.js';
import { EXIT_USAGE, FlagError, type Output, readText, stdio, UsageError } from './io.js';
import { cacertOption } from './tls.js';

export interface ReceiptVerifyCliOptions {
  policy?: string;
  earKey?: string;
  kbs?: string;
  cacert?: string;
  insecureHttp?: boolean;
  at?: string;
  collateral?: string;
  online?: boolean;
  json?: boolean;
}

export interface ReceiptReportCliOptions extends Omit<ReceiptVerifyCliOptions, 'policy' | 'json'> {
  metrics?: string;
  output?: string;
  force?: boolean;
}

/** A receipt is a few kB of JSON plus the evidence; anything far larger is not one. */
const MAX_RECEIPT_BYTES = 16 * 1024 * 1024;

/** Exit status per verdict, as `cloister verify` and `agent verify-receipt` (README "Exit status"). */
const EXIT: Record<EarStatus, number> = { affirming: 0, warning: 2, none: 2, contraindicated: 3 };
/** The receipt was read and does not verify, or the policy says no: a verdict that says no. */
const EXIT_INVALID = 3;
/** Collateral that could not be had: nothing was judged, so it is an error, not a verdict. */
const NOT_JUDGED = new Set(['collateral-missing', 'collateral-unavailable']);

/** The receipt file failed a check; `code` names which. */
class ReceiptInvalid extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const commonOptions = (c: Command): Command =>
  c
    .option(
      '--ear-key <file>',
      "the key broker's EAR verification key (a public JWK): check the receipt's EAR token",
    )
    .option(
      '--kbs <url>',
      "fetch the broker's EAR verification key from this broker (GET /.well-known/cloister-kbs)",
    )
    .addOption(cacertOption())
    .addOption(
      new Option(
        '--insecure-http',
        'allow a plain http:// --kbs that is not loopback (the key would cross in clear)',
      ),
    )
    .option('--at <time>', "verification time, ISO 8601 (default: the receipt's endedAt, else now)")
    .option('--collateral <dir>', 'folder with vendor collateral (file names as for cloister verify)')
    .option('--online', 'fetch missing collateral from the vendor services (cached under ~/.cache/cloister)');

export function registerReceipt(program: Command): void {
  const receipt = program
    .command('receipt')
    .description('check attested receipts (in-toto in DSSE) and report on training receipts');
  commonOptions(
    receipt
      .command('verify')
      .description(
        'check a receipt offline: signature, key binding, TEE evidence, the predicate, and with a broker key the EAR token',
      )
      .argument('<receipt>', 'the receipt: a DSSE envelope (JSON)')
      .option(
        '--policy <file>',
        'a CEL expression over statement, predicate, tee, ear and now that must be true',
      ),
  )
    .option('--json', 'print {ok, status, insecure, ear, policy, statement} as JSON')
    .addHelpText(
      'after',
      '\nExit status: 0 affirming; 2 verifies, but only a warning (the INSECURE sample TEE); 3 does not ' +
        'verify, is contraindicated, or the policy is false; 1 nothing was judged; 64 usage.\n' +
        '\nExamples:\n  cloister receipt verify out/training-receipt.json --ear-key broker-ear.pub.jwk\n' +
        '  cloister receipt verify out/training-receipt.json --policy require.cel\n' +
        '\nA policy is one CEL expression, e.g.:\n' +
        '  predicate.manifest.name == "tiny-lm" && !tee.insecure && ear != null && ear.status == "affirming"',
    )
    .exitOverride()
    .action(async (file: string, opts: ReceiptVerifyCliOptions) => {
      const code = await runReceiptVerify(file, opts, stdio);
      // main() turns a CommanderError into the process exit code.
      if (code !== 0) throw new CommanderError(code, 'cloister.receipt.verify', '');
    });
  commonOptions(
    receipt
      .command('report')
      .description('verify a training receipt and write an HTML report: loss curve and the receipt’s facts')
      .argument('<receipt>', 'the training receipt: a DSSE envelope (JSON)')
      .option('--metrics <file>', 'metrics.jsonl of the job ({"step":…,"loss":…,"heldout_loss":…} per line)')
      .addOption(new Option('-o, --output <file>', 'where to write the page (default: standard output)')),
  )
    .option('--force', 'overwrite --output')
    .addHelpText(
      'after',
      '\nThe receipt is verified first (as `receipt verify`); one that does not verify gets no report.\n' +
        '\nExample:\n  cloister receipt report out/training-receipt.json --metrics out/metrics.jsonl -o report.html',
    )
    .exitOverride()
    .action(async (file: string, opts: ReceiptReportCliOptions) => {
      const code = await runReceiptReport(file, opts, stdio);
      if (code !== 0) throw new CommanderError(code, 'cloister.receipt.report', '');
    });
}

interface Verified {
  statement: InTotoStatement<Record<string, unknown>>;
  appraisal: Appraisal;
  ear?: EarResult;
  /** An EAR key was given but the receipt carries no token. */
  earMissing: boolean;
  training: boolean;
  keyid: string;
  at: Date;
  code: number;
}

/** The receipt's JSON text, its EAR token and its endedAt, read before verifying (to choose keys and times). */
async function readReceipt(
  file: string,
): Promise<{ text: string; ear?: string; endedAt?: string; predicateType?: string }> {
  const { stat } = await import('node:fs/promises');
  const size = await stat(file).then(
    (s) => s.size,
    () => 0,
  );
  if (size > MAX_RECEIPT_BYTES)
    throw new ReceiptInvalid('receipt-malformed', `${size} bytes is too large for a receipt`);
  const text = await readText(file, 'receipt');
  try {
    const env = JSON.parse(text) as { payload?: unknown; protected?: unknown; signature?: unknown };
    if (typeof env?.protected === 'string' && typeof env.signature === 'string' && !('payloadType' in env))
      throw new ReceiptInvalid(
        'receipt-malformed',
        'this is a run receipt (a JWS), not a DSSE envelope: check it with cloister agent verify-receipt',
      );
    const { fromBase64 } = await import('../util/index.js');
    // Unverified: only to choose the verifier, the EAR key and the default time.
    const statement = JSON.parse(new TextDecoder().decode(fromBase64(String(env.payload ?? ''))));
    const p = statement?.predicate;
    return {
      text,
      ...(typeof statement?.predicateType === 'string' ? { predicateType: statement.predicateType } : {}),
      ...(typeof p?.attestation?.ear === 'string' ? { ear: p.attestation.ear } : {}),
      ...(typeof p?.endedAt === 'string' ? { endedAt: p.endedAt } : {}),
    };
  } catch (e) {
    if (e instanceof ReceiptInvalid) throw e;
    // The verifier names what is wrong.
    return { text };
  }
}

/** The broker's EAR key: a file, or fetched from the broker (the key whose kid the token names). */
async function earKeyOf(
  opts: ReceiptVerifyCliOptions,
  token: string | undefined,
): Promise<JsonWebKey | undefined> {
  if (opts.earKey !== undefined && opts.kbs !== undefined)
    throw new FlagError('give --ear-key FILE or --kbs URL, not both');
  if (opts.earKey !== undefined) {
    const text = await readText(opts.earKey, 'EAR key');
    try {
      return JSON.parse(text) as JsonWebKey;
    } catch (e) {
      throw new UsageError(`EAR key ${opts.earKey} is not JSON: ${(e as Error).message}`);
    }
  }
  if (opts.kbs === undefined) return undefined;
  const { checkClientUrl, clientFetch } = await import('../http/client.js');
  try {
    checkClientUrl(opts.kbs, opts.insecureHttp);
  } catch (e) {
    throw new FlagError(`--kbs ${opts.kbs}: ${(e as Error).message}`);
  }
  const { fetchPublicKeys } = await import('../kbs/admin-client.js');
  const keys = (await fetchPublicKeys(opts.kbs, await clientFetch(opts.cacert))).ear.keys;
  let kid: string | undefined;
  if (token) {
    const { decodeProtectedHeader } = await import('jose');
    try {
      kid = decodeProtectedHeader(token).kid;
    } catch {
      // verifyEar names what is wrong with the token
    }
  }
  const key = keys.find((k) => kid !== undefined && k.kid === kid) ?? keys[0];
  if (!key) throw new UsageError(`the broker at ${opts.kbs} publishes no EAR verification key`);
  return key as JsonWebKey;
}

/** Verifies the receipt file; ReceiptInvalid for what the receipt fails, other errors for the rest. */
async function verifyFile(file: string, opts: ReceiptVerifyCliOptions): Promise<Verified> {
  if (opts.at !== undefined && Number.isNaN(new Date(opts.at).getTime()))
    throw new FlagError(`--at ${opts.at} is not a time (use ISO 8601, e.g. 2025-09-01T00:00:00Z)`);
  const { text, ear: token, endedAt, predicateType } = await readReceipt(file);
  const earKey = await earKeyOf(opts, token);
  const { AttestationError, createDefaultRegistry } = await import('../attest/index.js');
  const { AttestedReceiptError, verifyAttestedEnvelope } = await import('../tee/index.js');
  const { TRAINING_PREDICATE_TYPE, TrainingReceiptError, verifyTrainingReceipt } = await import(
    '../tee/training-receipt.js'
  );
  const parsedEnd = endedAt !== undefined ? new Date(endedAt) : undefined;
  const at = new Date(
    opts.at ?? (parsedEnd && !Number.isNaN(parsedEnd.getTime()) ? parsedEnd.toISOString() : Date.now()),
  );
  const options = {
    registry: createDefaultRegistry(),
    at,
    collateral: await collateralSources(opts),
    ...(earKey ? { earKey } : {}),
  };
  // The predicate type read before verifying only picks the verifier; both check the signature over it.
  const training = predicateType === TRAINING_PREDICATE_TYPE;
  let v: Awaited<ReturnType<typeof verifyAttestedEnvelope>>;
  try {
    v = training ? await verifyTrainingReceipt(text, options) : await verifyAttestedEnvelope(text, options);
  } catch (e) {
    // What the receipt itself fails is a verdict; collateral that could not be had judges nothing.
    if (e instanceof AttestedReceiptError || e instanceof TrainingReceiptError)
      throw new ReceiptInvalid(e.code, e.message);
    if (e instanceof AttestationError && !NOT_JUDGED.has(e.code)) throw new ReceiptInvalid(e.code, e.message);
    throw e;
  }
  const a = v.appraisal;
  const earMissing = earKey !== undefined && !v.ear;
  const statuses: EarStatus[] = [a.status, ...(v.ear ? [v.ear.status] : [])];
  if (a.insecure || earMissing) statuses.push('warning');
  return {
    statement: v.statement,
    appraisal: a,
    ...(v.ear ? { ear: v.ear } : {}),
    earMissing,
    training,
    keyid: v.keyid,
    at,
    code: Math.max(...statuses.map((s) => EXIT[s])),
  };
}

/** What a policy sees: the statement, its predicate, the TEE's appraisal, the verified EAR (or null), now. */
function policyValues(v: Verified): Record<string, unknown> {
  const ear = v.ear
    ? {
        status: v.ear.status,
        issued_at: v.ear.issuedAt.toISOString(),
        verifier: v.ear.verifierId,
        submods: Object.fromEntries(
          Object.entries(v.ear.submods).map(([n, s]) => [
            n,
            { status: s.status, kind: s.kind ?? null, claims: s.claims, trust: s.trustVector },
          ]),
        ),
        init_data: v.ear.initData ?? null,
      }
    : null;
  return {
    statement: v.statement,
    predicate: v.statement.predicate,
    tee: {
      kind: v.appraisal.kind,
      status: v.appraisal.status,
      insecure: !!v.appraisal.insecure,
      claims: v.appraisal.claims,
      trust: v.appraisal.trustVector,
    },
    ear,
    now: v.at,
  };
}

const POLICY_VARIABLES = {
  statement: 'map<string, dyn>',
  predicate: 'map<string, dyn>',
  tee: 'map<string, dyn>',
  ear: 'dyn',
  now: 'google.protobuf.Timestamp',
};

async function compilePolicyFile(file: string) {
  const source = await readText(file, 'policy');
  const { compileDocumentPolicy, PolicyError } = await import('../policy/index.js');
  try {
    return compileDocumentPolicy(source, POLICY_VARIABLES);
  } catch (e) {
    if (e instanceof PolicyError) throw new UsageError(`policy ${file}: ${e.message}`);
    throw e;
  }
}

function verdictWord(code: number): string {
  return code === 0 ? 'AFFIRMING' : code === 2 ? 'WARNING' : 'CONTRAINDICATED';
}

function describeLines(file: string, v: Verified): string[] {
  const a = v.appraisal;
  const s = v.statement;
  const p = s.predicate as Record<string, unknown>;
  const lines = [
    `receipt ${path.basename(file)}: ${v.training ? 'training receipt' : 'attested receipt'} (${s.predicateType})`,
    `signature: verifies under key ${v.keyid}, which the TEE evidence binds`,
    `TEE evidence: ${a.kind}, ${a.status}${a.insecure ? ' (INSECURE sample TEE)' : ''}`,
    v.ear
      ? `EAR token: verifies, ${v.ear.status}`
      : v.earMissing
        ? 'EAR token: none in the receipt (warning)'
        : 'EAR token: not checked (give --ear-key or --kbs)',
  ];
  if (v.training) {
    const t = p as unknown as import('../tee/training-receipt.js').TrainingPredicate;
    lines.push(
      `job: ${t.manifest.name}, manifest sha256 ${t.manifest.sha256}`,
      `trainer: ${t.trainer.kind === 'builtin' ? `built-in ${t.trainer.name} (${t.trainer.software.name} ${t.trainer.software.version})` : t.trainer.argv.join(' ')}`,
      ...t.inputs.map((i) => `input ${i.name} (${i.kbs}) sealed sha256 ${i.sealedSha256}`),
      ...(t.startModel
        ? [`start model ${t.startModel.name} sealed sha256 ${t.startModel.sealedSha256}`]
        : []),
      t.checkpoints.length === 0 ? 'checkpoints: none' : `checkpoints: ${t.checkpoints.length}, chained`,
      `metrics: ${
        Object.entries(t.metrics)
          .map(([k, x]) => `${k} ${x}`)
          .join(', ') || 'none'
      }`,
      ...t.outputs.map((o) => `output ${o.file} sha256 ${o.sealedSha256} → ${o.recipients.join(', ')}`),
      `time: ${t.startedAt} → ${t.endedAt}`,
    );
  } else {
    lines.push(
      ...s.subject.map(
        (x) =>
          `subject ${x.name} ${Object.entries(x.digest)
            .map(([k, d]) => `${k}:${d}`)
            .join(' ')}`,
      ),
    );
  }
  return lines;
}

/** The message as one line of plain text (it may quote the receipt, which anyone may have written). */
function oneLine(message: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point.
  return message.replace(/\s*\n\s*/g, ' ').replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

/**
 * `cloister receipt verify`; returns the exit status: 0 affirming; 2 it verifies but only as a warning
 * (the INSECURE sample TEE, an out-of-date TCB, an EAR key given and no token in the receipt); 3 it does
 * not verify, is contraindicated or the policy is false; 1 nothing was judged (unreadable file, missing
 * collateral, a policy that does not compile); 64 a flag is wrong. Each failure is one line on `io.err`.
 */
export async function runReceiptVerify(
  file: string,
  opts: ReceiptVerifyCliOptions,
  io: Output,
): Promise<number> {
  const where = `cloister receipt verify: ${file}`;
  try {
    const policy = opts.policy !== undefined ? await compilePolicyFile(opts.policy) : undefined;
    const v = await verifyFile(file, opts);
    let decision: { allow: boolean; reasons: string[] } | undefined;
    if (policy) {
      const { evaluateDocumentPolicy } = await import('../policy/index.js');
      decision = evaluateDocumentPolicy(policy, policyValues(v));
    }
    const code = decision && !decision.allow ? EXIT_INVALID : v.code;
    if (opts.json) {
      io.out(
        `${JSON.stringify(
          {
            ok: code !== EXIT_INVALID,
            status: v.appraisal.status,
            insecure: !!v.appraisal.insecure,
            ear: v.ear ? v.ear.status : null,
            keyid: v.keyid,
            ...(decision ? { policy: decision } : {}),
            statement: v.statement,
          },
          null,
          2,
        )}\n`,
      );
    } else {
      const lines = describeLines(file, v);
      if (decision)
        lines.push(
          `policy ${opts.policy}: ${decision.allow ? 'holds' : `does not hold: ${decision.reasons.join('; ')}`}`,
        );
      lines.push(`result: ${decision && !decision.allow ? 'REFUSED BY POLICY' : verdictWord(code)}`);
      io.out(`${lines.map(oneLine).join('\n')}\n`);
    }
    if (decision && !decision.allow)
      io.err(`${where}: policy ${opts.policy} does not hold: ${oneLine(decision.reasons.join('; '))}\n`);
    return code;
  } catch (e) {
    return failed(e, where, 'cloister receipt verify', io, opts.json);
  }
}

function failed(e: unknown, where: string, verb: string, io: Output, json?: boolean): number {
  const invalid = e instanceof ReceiptInvalid;
  const message = oneLine((e as Error).message ?? String(e));
  io.err(invalid ? `${where}: does not verify [${e.code}]: ${message}\n` : `${verb}: ${message}\n`);
  if (json)
    io.out(
      `${JSON.stringify({ ok: false, error: { ...(invalid ? { code: e.code } : {}), message } }, null, 2)}\n`,
    );
  return invalid ? EXIT_INVALID : e instanceof FlagError ? EXIT_USAGE : 1;
}

/**
 * `cloister receipt report`: verifies a training receipt (as `receipt verify`), then writes the page.
 * Returns 0 once it is written (the page shows the verdict; a sample-TEE receipt is also named on
 * `io.err`); 3 a receipt that does not verify, is contraindicated or is not a training receipt; 1 an
 * error; 64 a flag is wrong.
 */
export async function runReceiptReport(
  file: string,
  opts: ReceiptReportCliOptions,
  io: Output,
): Promise<number> {
  const where = `cloister receipt report: ${file}`;
  try {
    const v = await verifyFile(file, opts);
    if (!v.training)
      throw new ReceiptInvalid(
        'receipt-predicate-type',
        `a report is made for training receipts; this one is ${v.statement.predicateType}`,
      );
    if (v.code === EXIT_INVALID)
      throw new ReceiptInvalid('contraindicated', 'the TEE evidence or the EAR token is contraindicated');
    const { parseMetricsJsonl, renderReport } = await import('../train/report.js');
    const metrics = opts.metrics ? parseMetricsJsonl(await readText(opts.metrics, 'metrics')) : [];
    const a = v.appraisal;
    const summary =
      `Verified: signature and key binding; TEE evidence ${a.kind}, ${a.status}; ` +
      (v.ear
        ? `EAR token ${v.ear.status}`
        : v.earMissing
          ? 'no EAR token in the receipt'
          : 'EAR token not checked') +
      ` (at ${v.at.toISOString()}).`;
    const html = renderReport(
      v.statement.predicate as unknown as import('../tee/training-receipt.js').TrainingPredicate,
      metrics,
      { status: verdictWord(v.code).toLowerCase(), insecure: !!a.insecure, summary },
    );
    if (opts.output === undefined || opts.output === '-') io.out(html);
    else {
      const { writeFileAtomically } = await import('../seal/node.js');
      await writeFileAtomically(opts.output, html, { mode: 0o644, force: !!opts.force });
      io.err(`wrote ${opts.output}${metrics.length > 0 ? ` (${metrics.length} metric lines)` : ''}\n`);
    }
    if (a.insecure) io.err(`${where}: WARNING: the receipt comes from the INSECURE sample TEE\n`);
    return 0;
  } catch (e) {
    return failed(e, where, 'cloister receipt report', io);
  }
}
