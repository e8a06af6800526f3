/**
 * `cloister run` (Node-only): attest, fetch keys, unseal the inputs into a private directory in
 * memory, run any program over them, seal what it wrote, sign a run receipt, wipe. See docs/agent.md.
 *
 * Order, and why:
 *   1. the receipt key is made and bound into TEE evidence first, so a TEE that cannot attest fails
 *      before anything else happens;
 *   2. the private directory is checked and made, and the output directory and receipt path are
 *      checked (no symbolic links: confined.ts), before the broker is asked for anything;
 *   3. every KEK (inputs and --seal-to recipients) is fetched before the first byte is unsealed, so a
 *      policy refusal leaves nothing behind and the workload never runs without a way to seal outputs;
 *   4. inputs are unsealed into <private>/inputs, the workload writes into <private>/outputs;
 *   5. outputs are sealed only when the workload exited 0 and no signal asked the agent to stop;
 *   6. the private directory is wiped on every path (private-dir.ts); a workload cannot outlive the
 *      agent, even a SIGKILLed one (lifetime.ts).
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { Header } from '../seal/index.js';
import { keyFromJwk, type Recipient } from '../seal/index.js';
import { openSealedPath, type SealedPath } from '../seal/node.js';
import { ConfinedDir } from './confined.js';
import type { CpuAttester, CpuKind } from './evidence/types.js';
import {
  envName,
  type SealedOutput,
  safeFileName,
  sealInto,
  type UnsealedFile,
  unsealInto,
} from './files.js';
import { AgentError, KekCache, type ResourceSource, resourcePathOf } from './keys.js';
import { findProgram, type GroupWatcher, parentDeathWrapper, startGroupWatcher } from './lifetime.js';
import { onTerminationSignal, PrivateDir, type PrivateDirOptions } from './private-dir.js';
import { createReceiptSigner, earClaimsOf, type ReceiptBody, signReceipt } from './receipt.js';

export interface RunOptions {
  kbs: ResourceSource;
  tee: { kind: CpuKind; attester: CpuAttester };
  inputs: string[];
  /** kbs:///repo/type/tag (KEK from the broker) or hpke:PUBLIC-KEY-FILE. */
  sealTo: string[];
  outputDir?: string;
  /** Where run-receipt.json goes; default <outputDir>/run-receipt.json. */
  receiptPath?: string;
  command: string[];
  privateDir: PrivateDirOptions;
  /** Progress lines for stderr. */
  log: (line: string) => void;
  /** Grace period after forwarding a signal before the workload is killed; default 10 s. */
  killAfterMs?: number;
}

async function recipientFor(spec: string, keys: KekCache): Promise<Recipient> {
  if (spec.startsWith('kbs:')) {
    const kek = await keys.get(spec);
    return { type: 'kbs', uri: spec, kek: kek.secret };
  }
  if (spec.startsWith('hpke:')) {
    const file = spec.slice(5);
    const key = keyFromJwk(await readFile(file, 'utf8'), `--seal-to ${spec}`);
    if (key.kind === 'kek')
      throw new AgentError('bad-recipient', `--seal-to ${spec}: ${file} is a KEK, not an HPKE public key`);
    return { type: 'hpke', publicKey: key.publicKey };
  }
  throw new AgentError(
    'bad-recipient',
    `--seal-to ${spec}: a recipient is kbs:///<repo>/<type>/<tag> (the KEK comes from the broker) or hpke:PUBLIC-KEY-FILE`,
  );
}

/** Plaintext file names for the inputs: the name sealed in the header, else the file name without .sealed. */
function inputNames(inputs: string[], headers: Header[]): string[] {
  const used = new Set<string>();
  const names: string[] = [];
  for (const [i, p] of inputs.entries()) {
    const header = headers[i]!;
    const base = safeFileName(header.name || basename(p).replace(/\.sealed$/, ''), `input-${i}`);
    let name = base;
    for (let n = 1; used.has(name); n++) name = `${n}-${base}`;
    used.add(name);
    names.push(name);
  }
  return names;
}

function signalGroup(group: number, sig: NodeJS.Signals): void {
  try {
    process.kill(group, sig);
  } catch {
    // The group is gone already.
  }
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Runs the workload; returns the status the agent exits with. */
export async function runWorkload(o: RunOptions): Promise<number> {
  if (o.command.length === 0) throw new AgentError('no-command', 'no command to run (give it after --)');
  if (o.sealTo.length > 0 && !o.outputDir)
    throw new AgentError('no-output-dir', '--seal-to needs --output-dir (where the sealed outputs go)');
  if (o.outputDir && o.sealTo.length === 0)
    throw new AgentError(
      'no-recipient',
      '--output-dir needs at least one --seal-to recipient for the outputs',
    );
  const keys = new KekCache(o.kbs);
  const opened: ConfinedDir[] = [];
  // Each input is opened once: its header names it and asks for its key, and the same handle unseals.
  const inputs: SealedPath[] = [];
  let watcher: GroupWatcher | undefined;
  let stopSignal: NodeJS.Signals | undefined;
  let child: ReturnType<typeof spawn> | undefined;
  let dir: PrivateDir | undefined;
  // Until the workload runs, a signal ends the agent at once (the exit hook wipes); while it runs,
  // the signal goes to the workload first and the agent ends when it has.
  const offSignals = onTerminationSignal((sig) => {
    stopSignal ??= sig;
    if (!child) {
      o.log(`interrupted by ${sig}; private directory wiped`);
      process.exit(128 + (constants.signals[sig] ?? 15));
    }
    o.log(`${sig}: passing it to the workload`);
    const group = -child.pid!;
    signalGroup(group, sig);
    setTimeout(() => signalGroup(group, 'SIGKILL'), o.killAfterMs ?? 10_000).unref();
  });
  try {
    o.log(`TEE: ${o.tee.kind} (${o.tee.attester.source})`);
    if (o.tee.attester.insecure)
      o.log('WARNING: the sample TEE is software only; never trust it with secrets');
    const signer = await createReceiptSigner(o.tee.attester);

    // Checked before the broker is asked for anything, so a run that cannot proceed releases no key.
    dir = await PrivateDir.create({ ...o.privateDir, warn: o.privateDir.warn ?? o.log });
    // Where the receipt and the sealed outputs go, refused now if a link is planted there: the host
    // owns that storage, and the agent (root in the TEE) must not write through its links.
    let receipt: { dir: ConfinedDir; name: string } | undefined;
    if (o.receiptPath) {
      const parent = await ConfinedDir.open(dirname(o.receiptPath));
      opened.push(parent);
      receipt = { dir: parent, name: basename(o.receiptPath) };
      await parent.checkTarget(receipt.name);
    }
    const outputs = o.outputDir ? await ConfinedDir.open(o.outputDir, true) : undefined;
    if (outputs) {
      opened.push(outputs);
      if (!receipt) {
        receipt = { dir: outputs, name: 'run-receipt.json' };
        await outputs.checkTarget(receipt.name);
      }
    }
    for (const p of o.inputs) inputs.push(await openSealedPath(p));
    const headers = inputs.map((s) => s.header);
    const names = inputNames(o.inputs, headers);
    o.log('attesting to the key broker');
    const token = await o.kbs.token();
    for (const [i, p] of o.inputs.entries()) {
      const k = await keys.forHeader(headers[i]!, p);
      o.log(`key released for ${p} (${resourcePathOf(k.uri!)})`);
    }
    const recipients: Recipient[] = [];
    for (const spec of o.sealTo) recipients.push(await recipientFor(spec, keys));

    const inDir = join(dir.path, 'inputs');
    const outDir = join(dir.path, 'outputs');
    await mkdir(inDir, { mode: 0o700 });
    await mkdir(outDir, { mode: 0o700 });
    const unsealed: UnsealedFile[] = [];
    for (const [i, p] of o.inputs.entries()) {
      unsealed.push(await unsealInto(inputs[i]!, p, inDir, names[i]!, keys));
      o.log(`unsealed ${p} → $CLOISTER_INPUT_${i} (${unsealed[i]!.size} bytes)`);
    }

    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CLOISTER_PRIVATE_DIR: dir.path,
      CLOISTER_INPUT_DIR: inDir,
      CLOISTER_OUTPUT_DIR: outDir,
      CLOISTER_INPUT_COUNT: String(unsealed.length),
    };
    for (const [i, u] of unsealed.entries()) {
      env[`CLOISTER_INPUT_${i}`] = u.path;
      env[`CLOISTER_INPUT_${envName(u.name)}`] = u.path;
    }
    // Checked here so that a missing program is a clear error, not the exit status of the wrapper.
    await findProgram(o.command[0]!, env.PATH);
    const pdeath = await parentDeathWrapper(env.PATH);
    if ('unavailable' in pdeath)
      o.log(
        `WARNING: no parent-death signal for the workload: ${pdeath.unavailable}; if the agent is killed (SIGKILL), only the group watcher ends the workload`,
      );
    const argv = [...('wrapper' in pdeath ? pdeath.wrapper : []), ...o.command];
    watcher = startGroupWatcher(o.log);
    const startedAt = new Date();
    o.log(`running ${o.command.join(' ')}`);
    // The workload's files are private too: umask 077 is inherited by the child.
    const oldMask = process.umask(0o077);
    const exit = await new Promise<Exit>((resolve, reject) => {
      // Its own process group, so a signal reaches every process of the workload (a shell's children
      // too), and none is left holding plaintext after the agent has wiped.
      child = spawn(argv[0]!, argv.slice(1), { env, stdio: 'inherit', detached: true });
      if (child.pid) watcher!.arm(child.pid);
      child.once('error', (e) =>
        reject(
          new AgentError(
            'spawn-failed',
            `cannot run ${o.command[0]}: ${(e as NodeJS.ErrnoException).code ?? e.message}`,
          ),
        ),
      );
      child.once('exit', (code, signal) => resolve({ code, signal }));
    }).finally(() => process.umask(oldMask));
    // Processes the workload left running in the background would outlive the wipe: end them.
    signalGroup(-child!.pid!, 'SIGKILL');
    watcher.release();
    child = undefined;
    const endedAt = new Date();
    const status = exit.code ?? 128 + (constants.signals[exit.signal!] ?? 0);
    o.log(exit.signal ? `workload ended by ${exit.signal}` : `workload exited with status ${exit.code}`);

    const sealed: SealedOutput[] = [];
    const produced = await ConfinedDir.open(outDir);
    opened.push(produced);
    const files = await produced.listFiles((rel, why) => o.log(`not sealed: outputs/${rel} is ${why}`));
    if (stopSignal) {
      o.log(`not sealing outputs: the agent was asked to stop (${stopSignal})`);
    } else if (status !== 0) {
      if (files.length > 0) o.log(`not sealing ${files.length} output file(s): the workload failed`);
    } else if (files.length > 0 && !outputs) {
      o.log(`discarding ${files.length} output file(s): no --output-dir given`);
    } else if (outputs) {
      // Every target is checked before the first is written, so a link planted for one output
      // stops the run with none sealed.
      for (const rel of files) await outputs.checkTarget(`${rel}.sealed`);
      for (const rel of files) {
        const s = await sealInto(produced, rel, outputs, recipients);
        sealed.push(s);
        o.log(`sealed outputs/${rel} → ${join(outputs.shown, s.file)}`);
      }
    }

    const body: ReceiptBody = {
      type: 'cloister-run-receipt/v1',
      command: o.command,
      exitCode: exit.code,
      signal: exit.signal,
      startedAt: startedAt.toISOString(),
      endedAt: endedAt.toISOString(),
      inputs: unsealed.map((u, i) => ({
        file: o.inputs[i]!,
        name: u.name,
        kbs: u.kbsUri,
        sealedSha256: u.sealedSha256,
      })),
      outputs: sealed,
      tee: { kind: o.tee.kind, insecure: o.tee.attester.insecure, claims: earClaimsOf(token) },
      ear: token,
      attestation: signer.attestation,
    };
    if (receipt) {
      const json = `${JSON.stringify(await signReceipt(body, signer), null, 2)}\n`;
      await receipt.dir.writeFile(receipt.name, 0o644, (fh) => fh.writeFile(json));
      o.log(`receipt: ${join(receipt.dir.shown, receipt.name)}`);
    }
    if (stopSignal) return 128 + (constants.signals[stopSignal] ?? 15);
    return status;
  } finally {
    offSignals();
    watcher?.release();
    for (const d of opened) await d.close();
    for (const s of inputs) await s.close();
    dir?.wipe();
    await keys.clear();
  }
}
