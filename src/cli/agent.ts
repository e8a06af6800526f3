/**
 * The commands that run inside the TEE. `agent detect` reports which TEE (and which GPUs) evidence can
 * be collected from, and why — every file and device it looked at (exit 0 when a TEE was found, 1 when
 * none was). `run` runs a workload over sealed inputs (src/tee/run.ts), `agent serve` is the local
 * API on a Unix socket (src/tee/api.ts), `agent verify-receipt` checks a run receipt.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { type Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { EarStatus } from '../attest/types.js';
import {
  DEFAULT_AGENT_SOCKET,
  DEFAULT_DEV_ROOT,
  DEFAULT_GRAMINE_ROOT,
  DEFAULT_PRIVATE_PARENT,
  DEFAULT_TSM_ROOT,
} from '../tee/defaults.js';
import type { Detection } from '../tee/evidence/index.js';
import type { CpuAttester, CpuKind, KbsClient, SampleEvidenceForm } from '../tee/index.js';
import { fromBase64 } from '../util/index.js';
import { collateralSources } from './collateral-sources.js';
import { EXIT_USAGE, FlagError, type Output, readText, stdio, UsageError } from './io.js';
import { integerOption } from './numbers.js';
import { sampleLaunch, sampleMeasurementArg } from './sample-tee.js';
import { cacertOption } from './tls.js';

export interface DetectCliOptions {
  json?: boolean;
  tsmRoot?: string;
  gramineRoot?: string;
  devRoot?: string;
  allowSample?: boolean;
}

function toJson(d: Detection): object {
  return {
    found: d.kind !== undefined,
    ...(d.kind ? { kind: d.kind, source: d.attester!.source, insecure: d.attester!.insecure } : {}),
    reasons: d.reasons,
    gpus: {
      count: d.gpus.devices.length,
      devices: d.gpus.devices.map((g) => g.path),
      ...(d.gpus.ccEnabled !== undefined ? { ccEnabled: d.gpus.ccEnabled } : {}),
      ...(d.gpus.ready !== undefined ? { ready: d.gpus.ready } : {}),
      ...(d.gpus.attester ? { source: d.gpus.attester.source } : {}),
      reasons: d.gpus.reasons,
    },
  };
}

function toText(d: Detection, kindName: (kind: CpuKind) => string): string {
  const lines: string[] = [];
  if (d.kind) {
    lines.push(`TEE: ${kindName(d.kind)} (${d.kind}) via ${d.attester!.source}`);
    if (d.attester!.insecure)
      lines.push('WARNING: the sample TEE is software only; never trust it with secrets');
  } else lines.push('TEE: none found');
  lines.push('checked:');
  for (const r of d.reasons) lines.push(`  - ${r}`);
  const n = d.gpus.devices.length;
  lines.push(n > 0 ? `GPUs: ${n} (${d.gpus.attester?.source ?? 'no evidence source'})` : 'GPUs: none');
  for (const r of d.gpus.reasons) lines.push(`  - ${r}`);
  return `${lines.join('\n')}\n`;
}

export async function runDetect(opts: DetectCliOptions, io: Output): Promise<number> {
  // Loaded on use: the collectors name their TEE kinds through attestation's vocabulary.
  const { detectTee, kindName, nodeFs, nodeRunner } = await import('../tee/evidence/index.js');
  const d = await detectTee({
    fs: nodeFs,
    tsmRoot: opts.tsmRoot ?? DEFAULT_TSM_ROOT,
    gramineRoot: opts.gramineRoot ?? DEFAULT_GRAMINE_ROOT,
    devRoot: opts.devRoot ?? DEFAULT_DEV_ROOT,
    allowSample: opts.allowSample === true,
    run: nodeRunner,
    path: process.env.PATH ?? '',
  });
  io.out(opts.json ? `${JSON.stringify(toJson(d), null, 2)}\n` : toText(d, kindName));
  if (d.kind === undefined) {
    io.err(
      'cloister agent detect: no TEE found (no configfs-tsm provider, no Gramine /dev/attestation; see the reasons above)\n',
    );
    return 1;
  }
  return 0;
}

export function registerAgent(program: Command): void {
  const agent = program.command('agent').description('commands that run inside the TEE');
  agent
    .command('detect')
    .description('find the TEE (TDX, SEV-SNP, SGX) and GPUs evidence can be collected from, and say why')
    .option('--json', 'print {found, kind, source, reasons, gpus} as JSON')
    .option('--tsm-root <dir>', `configfs-tsm report directory (default ${DEFAULT_TSM_ROOT})`)
    .option('--gramine-root <dir>', `Gramine attestation directory (default ${DEFAULT_GRAMINE_ROOT})`)
    .option('--dev-root <dir>', `device directory searched for GPUs (default ${DEFAULT_DEV_ROOT})`)
    .option('--allow-sample', 'fall back to the INSECURE software sample TEE when no hardware TEE is found')
    .addHelpText(
      'after',
      '\nExamples:\n  cloister agent detect\n  cloister agent detect --json --allow-sample',
    )
    .exitOverride()
    .action(async (opts: DetectCliOptions) => {
      const code = await runDetect(opts, stdio);
      // main() turns a CommanderError into the process exit code.
      if (code !== 0) throw new CommanderError(code, 'cloister.agent.detect', '');
    });
  registerAgentServe(agent);
  registerAgentVerifyReceipt(agent);
}

// ── run and serve ───────────────────────────────────────────────────────────────────────────────────

export interface TeeCliOptions {
  kbs: string;
  tee: 'auto' | 'sample';
  allowSample?: boolean;
  gpu: boolean;
  tsmRoot?: string;
  gramineRoot?: string;
  devRoot?: string;
  retries: string;
  retryDelayMs: string;
  initData?: string;
  sampleEvidence: SampleEvidenceForm;
  sampleMeasurement?: string;
  cacert?: string;
  /** `--kbs-route REPO=URL`, parsed: resources of repository REPO come from the broker at URL. */
  kbsRoute?: KbsRoute[];
}

export interface KbsRoute {
  repo: string;
  url: string;
}

/**
 * `--kbs-route REPO=URL`: the repository (first segment of kbs:///<repo>/<type>/<tag>) whose resources
 * come from the broker at URL instead of --kbs. Each REPO once.
 */
export function kbsRouteArg(v: string, prev: KbsRoute[] = []): KbsRoute[] {
  const i = v.indexOf('=');
  const repo = i < 0 ? '' : v.slice(0, i);
  const url = i < 0 ? '' : v.slice(i + 1);
  // As src/tee/keys.ts's resource segments: no '.' or '..' (or any leading '.'), which a broker's URL
  // would resolve away while routing goes by the raw name.
  if (!/^[A-Za-z0-9_-][A-Za-z0-9._-]*$/.test(repo))
    throw new InvalidArgumentError(
      `must be REPO=URL with REPO a broker repository (letters, digits, . _ -, not starting with '.'), got "${v}"`,
    );
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError(`${repo}: "${url}" is not a URL (https://kbs.example:8080)`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')
    throw new InvalidArgumentError(`${repo}: the broker URL must be http(s), got ${parsed.protocol}`);
  if (prev.some((r) => r.repo === repo))
    throw new InvalidArgumentError(`repository ${repo} is routed twice; give one broker per repository`);
  return [...prev, { repo, url }];
}

interface RunCliOptions extends TeeCliOptions {
  input: string[];
  sealTo: string[];
  outputDir?: string;
  receipt?: string;
  privateDir: string;
  allowDisk?: boolean;
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** The TEE options of every in-TEE command; `cloister serve` may take a local key instead of a broker. */
export function teeOptions(c: Command, kbsRequired = true): Command {
  // The variable the admin verbs read too, so one `export CLOISTER_KBS_URL=…` serves a whole session.
  // `serve` may take a local --key instead of a broker: it falls back to the variable itself.
  const help = 'key broker URL, e.g. https://kbs.example:8080';
  const kbs = new Option(
    '--kbs <url>',
    kbsRequired ? help : `${help} (default: env CLOISTER_KBS_URL, without --key)`,
  );
  return c
    .addOption(kbsRequired ? kbs.env('CLOISTER_KBS_URL').makeOptionMandatory() : kbs)
    .addOption(
      new Option(
        '--tee <kind>',
        'TEE to attest with: auto detects TDX/SEV-SNP/SGX; sample is the INSECURE software TEE',
      )
        .choices(['auto', 'sample'])
        .default('auto'),
    )
    .option(
      '--allow-sample',
      'with --tee auto, fall back to the INSECURE sample TEE when no hardware TEE is found',
    )
    .addOption(
      new Option(
        '--sample-evidence <form>',
        "with the sample TEE: cloister (signed, with a measurement) or coco (guest-components' {svn, report_data}, which a Trustee KBS requires)",
      )
        .choices(['cloister', 'coco'])
        .default('cloister'),
    )
    .option(
      '--sample-measurement <hex>',
      'with the sample TEE: the 48-byte launch measurement it reports (default zeros), to rehearse measurement pinning',
      sampleMeasurementArg,
    )
    .option('--no-gpu', 'do not attest confidential GPUs even when some are found')
    .option('--tsm-root <dir>', `configfs-tsm report directory (default ${DEFAULT_TSM_ROOT})`)
    .option('--gramine-root <dir>', `Gramine attestation directory (default ${DEFAULT_GRAMINE_ROOT})`)
    .option('--dev-root <dir>', `device directory searched for GPUs (default ${DEFAULT_DEV_ROOT})`)
    .option(
      '--kbs-route <repo=url>',
      "resources in repository REPO (kbs:///REPO/…) come from the broker at URL, attested separately (same TEE, same init-data); others from --kbs (repeatable; e.g. a model vendor's and a company's broker)",
      kbsRouteArg,
    )
    .option(
      '--init-data <file>',
      "CoCo init-data (TOML; JSON if the name ends in .json) whose digest the host put into the TEE's mr_config_id / host_data; sent to the broker with the evidence",
    )
    .addOption(cacertOption())
    .option('--retries <n>', 'attempts per broker request on network errors, 429 and 5xx', '4')
    .option('--retry-delay-ms <ms>', 'first delay between attempts, doubled each time', '200');
}

/** The TEE to attest with, and a KBS client speaking for it. */
async function teeAndBroker(o: TeeCliOptions, log: (line: string) => void) {
  const t = await teeFor(o, log);
  return { tee: { kind: t.kind, attester: t.attester }, client: await brokerFor(o, t) };
}

export interface CliTee {
  kind: CpuKind;
  attester: CpuAttester;
  gpu: Detection['gpus']['attester'];
}

/** The TEE named or detected by the options, with its GPUs when asked for. */
export async function teeFor(
  o: Omit<TeeCliOptions, 'kbs'>,
  log: (line: string) => void,
  initData?: { format: 'toml' | 'json'; body: string },
): Promise<CliTee> {
  let kind: CpuKind;
  let attester: CpuAttester;
  let gpu: Detection['gpus']['attester'];
  const { AgentError } = await import('../tee/index.js');
  const { detectTee, InsecureSampleAttester, nodeFs, nodeRunner } = await import('../tee/evidence/index.js');
  // With --init-data, the sample "host" puts its digest into host_data, as a real host would.
  const sample = o.tee === 'sample' || o.allowSample ? await sampleLaunch(o, initData) : undefined;
  if (o.tee === 'sample') {
    kind = 'sample';
    attester = new InsecureSampleAttester(sample);
  } else {
    const d = await detectTee({
      fs: nodeFs,
      tsmRoot: o.tsmRoot ?? DEFAULT_TSM_ROOT,
      gramineRoot: o.gramineRoot ?? DEFAULT_GRAMINE_ROOT,
      devRoot: o.devRoot ?? DEFAULT_DEV_ROOT,
      allowSample: o.allowSample === true,
      ...(sample ? { sample } : {}),
      run: nodeRunner,
      path: process.env.PATH ?? '',
    });
    if (!d.kind || !d.attester) {
      throw new AgentError(
        'no-tee',
        `no TEE found, so nothing can be attested:\n${d.reasons.map((r) => `  - ${r}`).join('\n')}`,
      );
    }
    kind = d.kind;
    attester = d.attester;
    if (o.gpu && d.gpus.attester && d.gpus.attester.count > 0) {
      gpu = d.gpus.attester;
      log(`GPUs: ${gpu.count} (${gpu.source})`);
    }
  }
  return { kind, attester, gpu };
}

/** The `--init-data` file as the broker wants it, read as it is (its digest covers its exact bytes). */
async function initDataFile(file: string): Promise<{ format: 'toml' | 'json'; body: string }> {
  const { AgentError } = await import('../tee/index.js');
  let body: string;
  try {
    body = new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(file));
  } catch (e) {
    throw new AgentError('bad-init-data', `cannot read --init-data ${file}: ${(e as Error).message}`);
  }
  return { format: file.toLowerCase().endsWith('.json') ? 'json' : 'toml', body };
}

/**
 * A key broker client that attests with `t`. With `--kbs-route`, the resources of each routed
 * repository come from that repository's broker (a client of its own, attesting the same TEE with
 * the same init-data); everything else (tokens, a training job's checkpoints and receipts) is --kbs's.
 */
export async function brokerFor(
  o: TeeCliOptions,
  t: CliTee,
  initData?: { format: 'toml' | 'json'; body: string },
): Promise<KbsClient> {
  // The broker client and the agent load when a verb needs them, not when the CLI starts.
  const { kbsAttester, routeResources } = await import('../tee/index.js');
  const { KbsClient } = await import('../tee/index.js');
  const { clientFetch } = await import('../http/client.js');
  const fetch = await clientFetch(o.cacert);
  const retries = integerOption(o.retries, '--retries', 1);
  const backoffMs = integerOption(o.retryDelayMs, '--retry-delay-ms', 0);
  const init = initData ?? (o.initData !== undefined ? await initDataFile(o.initData) : undefined);
  const client = (url: string) =>
    new KbsClient({
      url,
      fetch,
      attester: kbsAttester(t.kind, t.attester, t.gpu, { sampleForm: o.sampleEvidence }),
      retries,
      backoffMs,
      ...(init ? { initData: init } : {}),
    });
  const routes = new Map((o.kbsRoute ?? []).map((r) => [r.repo, client(r.url)]));
  return routeResources(client(o.kbs), routes);
}

/** `cloister run`: a top-level verb (main.ts registers it) kept here for the TEE options it shares with `agent`. */
export function registerRun(program: Command): void {
  teeOptions(
    program
      .command('run')
      .description(
        'inside a TEE: attest, unseal inputs into memory, run COMMAND over them, seal its outputs, sign a receipt',
      )
      .argument('<command...>', 'the workload and its arguments (after --)'),
  )
    .option(
      '--input <file>',
      'a sealed input (repeatable); its key is fetched by the kbs:/// URI in its header',
      collect,
      [],
    )
    .option('--output-dir <dir>', 'where sealed outputs and run-receipt.json are written')
    .option(
      '--seal-to <recipient>',
      'recipient of the outputs (repeatable): kbs:///repo/type/tag (KEK from the broker) or hpke:PUBLIC-KEY-FILE',
      collect,
      [],
    )
    .option('--receipt <file>', 'where to write the run receipt (default OUTPUT-DIR/run-receipt.json)')
    .option('--private-dir <dir>', 'memory file system for the plaintext', DEFAULT_PRIVATE_PARENT)
    .option('--allow-disk', 'accept a --private-dir that is not tmpfs/ramfs (plaintext may reach a disk)')
    .addHelpText(
      'after',
      '\nExample:\n  cloister run --kbs https://kbs.example:8080 --input prompt.txt.sealed \\\n' +
        '    --output-dir out --seal-to kbs:///owner/outputs/kek2 \\\n' +
        '    -- sh -c \'wc -w < "$CLOISTER_INPUT_PROMPT_TXT" > "$CLOISTER_OUTPUT_DIR/count.txt"\'',
    )
    .exitOverride()
    .action(async (command: string[], opts: RunCliOptions) => {
      const log = (line: string) => process.stderr.write(`cloister run: ${line}\n`);
      const { tee, client } = await teeAndBroker(opts, log);
      const { runWorkload } = await import('../tee/index.js');
      const code = await runWorkload({
        kbs: client,
        tee,
        inputs: opts.input,
        sealTo: opts.sealTo,
        ...(opts.outputDir ? { outputDir: opts.outputDir } : {}),
        ...(opts.receipt ? { receiptPath: opts.receipt } : {}),
        command,
        privateDir: { parent: opts.privateDir, allowDisk: opts.allowDisk === true },
        log,
      });
      if (code !== 0) throw new CommanderError(code, 'cloister.run', '');
    });
}

function registerAgentServe(agent: Command): void {
  teeOptions(
    agent
      .command('serve')
      .description('serve the local API (keys, tokens, evidence, seal/unseal) on a Unix socket'),
  )
    .option(
      '--socket <path>',
      'Unix socket to listen on (created mode 0600; its folder must exist)',
      DEFAULT_AGENT_SOCKET,
    )
    .addHelpText(
      'after',
      `\nExample:\n  cloister agent serve --socket ${DEFAULT_AGENT_SOCKET} --kbs https://kbs.example:8080\n` +
        `  curl --unix-socket ${DEFAULT_AGENT_SOCKET} http://agent/resource/owner/models/kek1\n` +
        'In development (the INSECURE software TEE, a private socket):\n' +
        '  cloister agent serve --tee sample --socket ./agent.sock --kbs http://127.0.0.1:8080',
    )
    .exitOverride()
    .action(async (opts: TeeCliOptions & { socket: string }) => {
      const log = (line: string) => process.stderr.write(`cloister agent serve: ${line}\n`);
      const { tee, client } = await teeAndBroker(opts, log);
      const { serveAgentApi } = await import('../tee/index.js');
      const { onTerminationSignal } = await import('../tee/index.js');
      if (tee.attester.insecure) log('WARNING: the sample TEE is software only; never trust it with secrets');
      const s = await serveAgentApi(opts.socket, { kbs: client, tee, log });
      log(`listening on ${opts.socket} (TEE ${tee.kind}, key broker ${opts.kbs})`);
      await new Promise<void>((resolve) => {
        const off = onTerminationSignal((sig) => {
          off();
          log(`${sig}: stopping`);
          void s.close().then(resolve);
        });
      });
    });
}

interface VerifyReceiptCliOptions {
  earKey?: string;
  at?: string;
  collateral?: string;
  online?: boolean;
  json?: boolean;
}

function registerAgentVerifyReceipt(agent: Command): void {
  agent
    .command('verify-receipt')
    .description(
      'check a run receipt: signature, key binding, TEE evidence, and (with --ear-key) the EAR token',
    )
    .argument('<file>', 'run-receipt.json')
    .option('--ear-key <file>', "the key broker's EAR verification key (a public JWK)")
    .option('--at <time>', "verification time, ISO 8601 (default: the receipt's endedAt)")
    .option('--collateral <dir>', 'folder with vendor collateral (file names as for cloister verify)')
    .option('--online', 'fetch missing collateral from the vendor services (cached under ~/.cache/cloister)')
    .option('--json', 'print {ok, body, status, insecure} as JSON')
    .addHelpText(
      'after',
      '\nExample:\n  cloister agent verify-receipt out/run-receipt.json --ear-key broker-ear.pub.jwk',
    )
    .exitOverride()
    .action(async (file: string, opts: VerifyReceiptCliOptions) => {
      const code = await runVerifyReceipt(file, opts, stdio);
      // main() turns a CommanderError into the process exit code.
      if (code !== 0) throw new CommanderError(code, 'cloister.agent.verify-receipt', '');
    });
}

/** Exit status per verdict, as `cloister verify` (README "Exit status"). */
const RECEIPT_EXIT: Record<EarStatus, number> = { affirming: 0, warning: 2, none: 2, contraindicated: 3 };
/** The receipt was read and does not verify: a verdict that says no. */
const EXIT_INVALID = 3;
/** Collateral that could not be had: nothing was judged, so it is an error, not a verdict. */
const NOT_JUDGED = new Set(['collateral-missing', 'collateral-unavailable']);

/** The receipt file's content failed a check; `code` names which. */
class ReceiptInvalid extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * `cloister agent verify-receipt`; returns the exit status: 0 affirming; 2 it verifies but the
 * evidence is only a warning (the INSECURE sample TEE, an out-of-date TCB); 3 it does not verify (or
 * the evidence or EAR is contraindicated); 1 nothing was judged (unreadable file, collateral
 * missing); 64 a flag is wrong. Every failure is one line on `io.err` naming the file.
 */
export async function runVerifyReceipt(
  file: string,
  opts: VerifyReceiptCliOptions,
  io: Output,
): Promise<number> {
  const where = `cloister agent verify-receipt: ${file}`;
  try {
    const { verifyReceipt } = await import('../tee/index.js');
    const { AttestationError } = await import('../attest/index.js');
    const { createDefaultRegistry } = await import('../attest/index.js');
    const { certTableCollateral } = await import('../attest/index.js');
    const { AgentError } = await import('../tee/index.js');
    if (opts.at !== undefined && Number.isNaN(new Date(opts.at).getTime()))
      throw new FlagError(`--at ${opts.at} is not a time (use ISO 8601, e.g. 2025-09-01T00:00:00Z)`);
    const text = await readText(file, 'receipt');
    const earKey = opts.earKey
      ? (parseJson(await readText(opts.earKey, 'EAR key'), `EAR key ${opts.earKey}`) as JsonWebKey)
      : undefined;
    let receipt: { payload?: string };
    let body: { endedAt?: string; attestation?: { auxblob?: string } };
    try {
      receipt = JSON.parse(text);
      body = JSON.parse(new TextDecoder().decode(fromBase64(receipt.payload ?? '')));
    } catch (e) {
      throw new ReceiptInvalid('not-a-receipt', `not a run receipt (a JWS in JSON): ${(e as Error).message}`);
    }
    const at = new Date(opts.at ?? body.endedAt ?? '');
    if (Number.isNaN(at.getTime()))
      throw new ReceiptInvalid('not-a-receipt', 'the receipt names no endedAt time; give --at');
    const aux = body.attestation?.auxblob;
    let v: Awaited<ReturnType<typeof verifyReceipt>>;
    try {
      v = await verifyReceipt(receipt as Parameters<typeof verifyReceipt>[0], {
        registry: createDefaultRegistry(),
        at,
        collateral: await collateralSources(opts, aux ? [certTableCollateral(fromBase64(aux))] : []),
        ...(earKey ? { earKey } : {}),
      });
    } catch (e) {
      // What the receipt itself fails is a verdict; collateral that could not be had judges nothing.
      if (e instanceof AgentError) throw new ReceiptInvalid(e.code, e.message);
      if (e instanceof AttestationError && !NOT_JUDGED.has(e.code))
        throw new ReceiptInvalid(e.code, e.message);
      throw e;
    }
    const a = v.appraisal;
    const statuses: EarStatus[] = [a.status, ...(v.ear ? [v.ear.status] : [])];
    if (a.insecure) statuses.push('warning');
    const code = Math.max(...statuses.map((st) => RECEIPT_EXIT[st]));
    if (opts.json) {
      io.out(
        `${JSON.stringify({ ok: true, status: a.status, insecure: a.insecure, ear: v.ear ? v.ear.status : null, body: v.body }, null, 2)}\n`,
      );
      return code;
    }
    const lines = [
      `receipt ${path.basename(file)}: signature and key binding verify`,
      `TEE evidence: ${a.kind}, ${a.status}${a.insecure ? ' (INSECURE sample TEE)' : ''}`,
      v.ear ? `EAR token: verifies, ${v.ear.status}` : 'EAR token: not checked (give --ear-key)',
      `command: ${v.body.command.join(' ')}`,
      `exit: ${v.body.signal ?? v.body.exitCode}, ${v.body.startedAt} → ${v.body.endedAt}`,
      ...v.body.inputs.map((i) => `input ${i.file} (${i.kbs}) sha256 ${i.sealedSha256}`),
      ...v.body.outputs.map((o) => `output ${o.file} sha256 ${o.sealedSha256}`),
      `result: ${code === 0 ? 'AFFIRMING' : code === 2 ? 'WARNING' : 'CONTRAINDICATED'}`,
    ];
    io.out(`${lines.join('\n')}\n`);
    return code;
  } catch (e) {
    const invalid = e instanceof ReceiptInvalid;
    const message = (e as Error).message.replace(/\s*\n\s*/g, ' ');
    io.err(
      invalid
        ? `${where}: does not verify [${e.code}]: ${message}\n`
        : `cloister agent verify-receipt: ${message}\n`,
    );
    if (opts.json)
      io.out(
        `${JSON.stringify({ ok: false, error: { ...(invalid ? { code: e.code } : {}), message: (e as Error).message } }, null, 2)}\n`,
      );
    return invalid ? EXIT_INVALID : e instanceof FlagError ? EXIT_USAGE : 1;
  }
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${what} is not JSON: ${(e as Error).message}`);
  }
}
