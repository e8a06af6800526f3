/**
 * `cloister log verify FILE`: checks an exported transparency-log bundle offline (hash chain, Merkle
 * roots at every checkpoint, checkpoint signatures, consistency, inclusion proofs) against the log's
 * verifier key. `cloister log keygen`: makes the Ed25519 key a broker signs checkpoints with.
 * Exit status (README "Exit status"): 0 everything verified, 3 the bundle does not verify, 1 nothing
 * was judged (unreadable file, malformed key), 64 a flag is wrong; the reason is one line.
 */
import { open } from 'node:fs/promises';
import { type Command, CommanderError, Option } from 'commander';
import { writeFileAtomically, writeOutput } from '../seal/node.js';
import {
  type BundleReport,
  generateNoteSigner,
  parseVerifierKey,
  readBundleLines,
  TranslogError,
  verifyBundleLines,
} from '../translog/index.js';
import { EXIT_USAGE, FlagError, type Output, readText, stdio, UsageError } from './io.js';
import { type Conn, connOptions } from './kbs.js';

export interface LogVerifyOptions {
  /** Verifier keys; more than one for a bundle whose checkpoints span a log-key rotation. */
  key?: string[];
  keyFile?: string;
  origin?: string;
  json?: boolean;
}

/**
 * The bundle's bytes as they are read (`-`: standard input), so that a bundle of any length is
 * verified in bounded memory; opened first so that an unreadable file is a usage error.
 */
async function openBundle(file: string): Promise<AsyncIterable<Uint8Array>> {
  if (file === '-') return process.stdin;
  try {
    return (await open(file)).createReadStream();
  } catch (e) {
    throw new UsageError(`cannot read bundle ${file}: ${(e as Error).message}`);
  }
}

function summary(file: string, r: BundleReport): string {
  const n = r.entries.to - r.entries.from;
  const latest = r.checkpoints[r.checkpoints.length - 1];
  const lines = [
    `bundle: ${file}`,
    `log: ${r.origin}`,
    `entries: ${n === 0 ? 'none' : `${r.entries.from}…${r.entries.to - 1} (${n}), hash chain intact`}`,
    `checkpoints: ${r.checkpoints.length} signed and matching the entries` +
      (latest ? ` (latest: size ${latest.size}, root ${latest.root})` : ''),
    `proofs: ${r.inclusionProofs} inclusion, ${r.consistencyProofs} consistency verified`,
    'result: VERIFIED',
  ];
  return `${lines.join('\n')}\n`;
}

/** The bundle was read and judged, and it does not verify (a verdict that says no). */
const EXIT_INVALID = 3;

/** Runs the verb; returns the exit code. */
export async function runLogVerify(file: string, opts: LogVerifyOptions, io: Output): Promise<number> {
  try {
    // After a log-key rotation, a bundle's older checkpoints carry the old key's signature: each key
    // given (one per --key, one per line of --key-file) is trusted.
    const keys = [...(opts.key ?? [])];
    if (opts.keyFile !== undefined)
      keys.push(
        ...(await readText(opts.keyFile, 'key file'))
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l !== ''),
      );
    if (keys.length === 0)
      throw new FlagError('give the log verifier key with --key VKEY or --key-file FILE');
    const report = await verifyBundleLines(
      readBundleLines(await openBundle(file)),
      await Promise.all(keys.map(parseVerifierKey)),
      opts.origin ? { origin: opts.origin } : {},
    );
    if (opts.json) io.out(`${JSON.stringify(report, null, 2)}\n`);
    if (report.ok) {
      if (!opts.json) io.out(summary(file, report));
      return 0;
    }
    const [first] = report.errors;
    const more = report.errors.length - 1;
    io.err(
      `cloister log verify: FAILED [${first?.code}] ${first?.message}` +
        (more > 0 ? ` (and ${more}${report.truncated ? '+' : ''} more problem(s); --json lists them)` : '') +
        '\n',
    );
    return EXIT_INVALID;
  } catch (e) {
    const msg =
      e instanceof TranslogError
        ? `FAILED [${e.code}] ${e.message}`
        : e instanceof UsageError
          ? e.message
          : `unexpected failure: ${(e as Error).message}`;
    io.err(`cloister log verify: ${msg.replace(/\s*\n\s*/g, ' ')}\n`);
    if (opts.json) {
      const error = e instanceof TranslogError ? e.toJSON() : { message: (e as Error).message };
      io.out(`${JSON.stringify({ ok: false, errors: [error] }, null, 2)}\n`);
    }
    if (e instanceof FlagError) return EXIT_USAGE;
    // A malformed key judges nothing; any other refusal is about the bundle: it does not verify.
    return e instanceof TranslogError && e.code !== 'bad-key' ? EXIT_INVALID : 1;
  }
}

/** Writes a new Ed25519 checkpoint key (private JWK, mode 0600, never overwritten); returns the vkey. */
export async function runLogKeygen(name: string, out: string): Promise<string> {
  const { jwk, vkey } = await generateNoteSigner(name);
  try {
    await writeFileAtomically(out, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600 });
  } catch (e) {
    throw new UsageError(`cannot write ${out}: ${(e as Error).message}`);
  }
  return vkey;
}

export interface LogExportOptions extends Conn {
  out?: string;
  proofs?: 'all';
  force?: boolean;
}

/**
 * `cloister log export`: the bundle as the broker streams it, to a file (through a temporary, so a
 * refusal or a cut connection leaves no bundle behind) or to stdout.
 */
export async function runLogExport(o: LogExportOptions): Promise<void> {
  if (!o.token) throw new UsageError('no admin token: pass --token or set CLOISTER_ADMIN_TOKEN');
  const { AdminClient, AdminClientError } = await import('../kbs/admin-client.js');
  const { checkClientUrl, clientFetch } = await import('../http/client.js');
  checkClientUrl(o.url, o.insecureHttp);
  const path = `/admin/v1/log/bundle${o.proofs === 'all' ? '?proofs=all' : ''}`;
  let body: ReadableStream<Uint8Array>;
  try {
    body = await new AdminClient(o.url, o.token, await clientFetch(o.cacert)).stream(path);
  } catch (e) {
    if (e instanceof AdminClientError && e.problem?.status === 403)
      throw new UsageError(
        `the broker refused this token (403: ${e.problem.detail ?? 'forbidden'}): the log is exported with an admin or global-auditor token (cloister kbs admin-token --role global-auditor)`,
      );
    throw e;
  }
  await writeOutput(body, o.out ?? '-', o.force);
}

const VERIFY_HELP = `
Example:
  cloister log verify kbs-log.jsonl --key 'broker.example/log+1a2b3c4d+AR…'
  cloister log verify kbs-log.jsonl --key-file broker.vkey --json
  curl -H "authorization: Bearer $TOKEN" https://kbs.example/admin/v1/log/bundle?proofs=all |
    cloister log verify - --key-file broker.vkey

Checks, offline: every entry's index and prevHash chain; the Merkle root recomputed at each
checkpoint's size equals the signed root; checkpoint signatures (C2SP signed note, Ed25519);
consistency between successive checkpoints; the inclusion and consistency proofs in the bundle;
and that every entry is covered by a signed checkpoint. The bundle is read as it comes: a bundle in the
streamed layout (as the key broker exports it) is verified in bounded memory, whatever its length.
Format: docs/transparency-log.md.

Exit status: 0 everything verified; 3 the bundle does not verify (the first reason is printed on
one line); 1 nothing was judged (unreadable bundle, malformed key); 64 a flag is wrong.
`;

export function registerLog(program: Command): void {
  const log = program
    .command('log')
    .description('the key broker transparency log: export it, verify exports, make keys');
  log
    .command('verify')
    .description('verify an exported transparency-log bundle offline against the log key')
    .argument('<bundle>', 'bundle file (JSON lines, as exported by the key broker); - reads stdin')
    .option(
      '--key <vkey>',
      'log verifier key: <name>+<key id hex>+<base64 key> (repeatable: old and new keys across a rotation)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--key-file <file>', 'file holding the log verifier key(s), one per line')
    .option('--origin <origin>', 'log origin the checkpoints must name (default: the key name)')
    .option('--json', 'print the full report, every problem included, as JSON')
    .addHelpText('after', VERIFY_HELP)
    .action(async (file: string, opts: LogVerifyOptions) => {
      const code = await runLogVerify(file, opts, stdio);
      if (code !== 0) throw new CommanderError(code, 'cloister.log.verify', '');
    });
  connOptions(
    log
      .command('export')
      .description("export the key broker's transparency log as a bundle for `cloister log verify`")
      .option('--out <file>', 'write the bundle here (default: stdout)')
      .addOption(new Option('--proofs <which>', 'all: an inclusion proof for every entry').choices(['all']))
      .option('--force', 'overwrite --out')
      .addHelpText(
        'after',
        "\nNeeds an admin or global-auditor token: the log chains every tenant's entries.\n" +
          '\nExamples:\n  cloister log export --out log.jsonl --proofs all\n' +
          '  cloister log export | cloister log verify - --key-file broker.vkey',
      ),
  ).action(async (opts: LogExportOptions) => {
    try {
      await runLogExport(opts);
    } catch (e) {
      process.stderr.write(`cloister log export: ${(e as Error).message}\n`);
      throw new CommanderError(1, 'cloister.log.export', '');
    }
  });
  log
    .command('keygen')
    .description('create an Ed25519 checkpoint signing key (JWK, mode 0600) and print its verifier key')
    .requiredOption('--name <name>', 'key name = log origin, e.g. broker.example/log')
    .requiredOption('--out <file>', 'where to write the private key (refuses to overwrite)')
    .addHelpText('after', '\nExample:\n  cloister log keygen --name broker.example/log --out log-key.jwk\n')
    .action(async (opts: { name: string; out: string }) => {
      try {
        process.stdout.write(`${await runLogKeygen(opts.name, opts.out)}\n`);
      } catch (e) {
        process.stderr.write(`cloister log keygen: ${(e as Error).message}\n`);
        throw new CommanderError(1, 'cloister.log.keygen', '');
      }
    });
}
