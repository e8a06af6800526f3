/** `cloister keygen | seal | unseal | inspect` — thin shells over src/seal. */
import { readFile, stat } from 'node:fs/promises';
import type { Command } from 'commander';
import type { Header, Jwk, Recipient } from '../seal/index.js';
import {
  FileError,
  readHeader,
  sealFile,
  sha256FileOffThread,
  unsealFile,
  unsealRange,
  writeFileAtomically,
} from '../seal/node.js';
import { printJson } from './io.js';
import { integerOption } from './numbers.js';
import { progressBar } from './progress.js';
import { cleanupOnSignals } from './signals.js';

async function readKeyFile(path: string) {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new FileError(
      `cannot read key file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const { keyFromJwk } = await import('../seal/index.js');
  return keyFromJwk(text, `key file ${path}`);
}

interface KeygenCliOptions {
  kek?: string;
  uri?: string;
  hpke?: string;
  pub?: string;
  serving?: string;
  keyId?: string;
  for?: string[];
  allowPlaintext?: boolean;
  force?: boolean;
}

function writeKeyFile(path: string, jwk: Jwk, secret: boolean, force: boolean): Promise<void> {
  return writeFileAtomically(path, `${JSON.stringify(jwk, null, 2)}\n`, {
    mode: secret ? 0o600 : 0o644,
    force,
  });
}

/** `--workers N`: a whole number; anything else is refused before any work starts. */
const workersOption = (v: string) => integerOption(v, '--workers', 0);

async function parseRecipient(spec: string, ignoreKid: boolean): Promise<Recipient> {
  if (spec.startsWith('kbs:')) {
    const eq = spec.indexOf('=');
    if (eq < 0) throw new FileError(`--to ${spec}: give the KEK file as kbs:///repo/type/tag=FILE`);
    const { checkKbsUri } = await import('../seal/index.js');
    const uri = checkKbsUri(spec.slice(0, eq));
    const file = spec.slice(eq + 1);
    const key = await readKeyFile(file);
    if (key.kind !== 'kek')
      throw new FileError(`--to ${spec}: ${file} is not a key-encryption key (kty "oct")`);
    // A file sealed to one resource whose key the owner stores under another name (the kid) fails only
    // later, inside the TEE, when the broker has no key at the URI the header names: refuse it here.
    if (key.uri?.startsWith('kbs:') && key.uri !== uri && !ignoreKid)
      throw new FileError(
        `--to ${spec}: ${file} is the key ${key.uri}, not ${uri} (seal to its own URI, or add --ignore-kid if the broker will hold this key under ${uri})`,
      );
    return { type: 'kbs', uri, kek: key.secret };
  }
  if (spec.startsWith('hpke:')) {
    const key = await readKeyFile(spec.slice(5));
    if (key.kind === 'kek')
      throw new FileError(`--to ${spec}: ${spec.slice(5)} is a KEK, not an HPKE public key`);
    return { type: 'hpke', publicKey: key.publicKey };
  }
  throw new FileError(`--to ${spec}: a recipient is kbs:///repo/type/tag=KEKFILE or hpke:PUBFILE`);
}

function parseSize(s: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(s.trim());
  if (!m) throw new FileError(`"${s}" is not a size (e.g. 1MiB, 65536)`);
  const unit = (m[2] ?? '').toUpperCase()[0];
  const mult = unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
}

function parseRange(s: string): [number, number] {
  const m = /^(\d+)-(\d+)$/.exec(s);
  if (!m) throw new FileError(`--range ${s}: expected A-B (bytes A up to, not including, B)`);
  return [Number(m[1]), Number(m[2])];
}

async function sizeOf(path: string): Promise<number | undefined> {
  return path === '-' ? undefined : (await stat(path).catch(() => undefined))?.size;
}

function describeHeader(h: Header, fileSize: number): Record<string, unknown> {
  return {
    format: `cloister-sealed v${h.version}`,
    suite: 'AES-256-GCM STREAM (HKDF-SHA256, HMAC-SHA256 header)',
    chunkSize: h.chunkSize,
    plaintextLength: h.plaintextLength ?? null,
    sealedLength: fileSize,
    contentType: h.contentType || null,
    name: h.name || null,
    recipients: h.recipients.map((r) => ({ type: r.type, keyId: r.keyId })),
  };
}

export function registerSealCommands(program: Command): void {
  program
    .command('keygen')
    .description('make a key: a key-encryption key (for kbs recipients) or an HPKE key pair')
    .option('--kek <file>', 'write a new AES-256 key-encryption key (JWK, mode 0600)')
    .option('--uri <kbs-uri>', 'record the broker resource URI in the KEK file (kid)')
    .option('--hpke <file>', 'write a new X25519 HPKE private key (JWK, mode 0600)')
    .option('--pub <file>', 'with --hpke: write its public key here')
    .option(
      '--serving <file>',
      'write the OHTTP and receipt keys that replicas of `cloister serve` share (mode 0600; store it in the broker)',
    )
    .option('--key-id <n>', 'with --serving: the OHTTP key id, 0-255 (default: random)')
    .option(
      '--for <model.sealed>',
      'with --serving: a sealed model every replica serves, in --model order (repeatable, at least one)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--allow-plaintext', 'with --serving: the replicas run with --allow-plaintext')
    .option('--force', 'overwrite existing files')
    .addHelpText(
      'after',
      '\nExamples:\n  cloister keygen --kek owner.kek --uri kbs:///owner/models/kek1\n  cloister keygen --hpke broker.key --pub broker.pub\n  cloister keygen --serving serving-keys.json --for llama.gguf.sealed',
    )
    .action(async (o: KeygenCliOptions) => {
      // Loaded here, not at start: the inference modules behind --serving are heavy (see bench/cli.js).
      const { checkKbsUri, generateHpkeKeyPair, generateKek, hpkePrivateToJwk, hpkePublicToJwk, kekToJwk } =
        await import('../seal/index.js');
      if ([o.kek, o.hpke, o.serving].filter(Boolean).length !== 1)
        throw new FileError(
          'keygen: give exactly one of --kek FILE, --hpke FILE --pub FILE, or --serving FILE',
        );
      if (o.serving) {
        const keyId = o.keyId === undefined ? undefined : integerOption(o.keyId, '--key-id', 0);
        if (keyId !== undefined && keyId > 255) throw new FileError('--key-id must be 0-255');
        if (!o.for?.length)
          throw new FileError(
            'keygen --serving FILE needs --for MODEL.sealed for each model the replicas serve',
          );
        const { modelIdOf } = await import('../infer/node.js');
        const { encodeServingKeys, generateServingKeys } = await import('../infer/node.js');
        const models = [];
        for (const file of o.for) {
          const { header } = await readHeader(file);
          models.push({ id: modelIdOf(header, file), digest: await sha256FileOffThread(file) });
        }
        const keys = await generateServingKeys({
          exportable: true,
          ...(keyId !== undefined ? { keyId } : {}),
        });
        const doc = await encodeServingKeys(keys, { models, plaintextAllowed: o.allowPlaintext === true });
        await writeFileAtomically(o.serving, doc, { mode: 0o600, force: !!o.force });
        process.stderr.write(
          `wrote serving keys ${o.serving} (OHTTP key id ${keys.gateway.config.keyId}); store it as a broker resource and pass --serving-keys kbs:///… to every replica\n`,
        );
        return;
      }
      if (o.kek) {
        if (o.uri) checkKbsUri(o.uri);
        await writeKeyFile(o.kek, kekToJwk(generateKek(o.uri)), true, !!o.force);
        process.stderr.write(`wrote key-encryption key ${o.kek}\n`);
        return;
      }
      if (!o.pub) throw new FileError('keygen --hpke FILE needs --pub FILE for the public key');
      const kp = await generateHpkeKeyPair();
      await writeKeyFile(o.hpke!, await hpkePrivateToJwk(kp), true, !!o.force);
      const pub = await hpkePublicToJwk(kp.publicKey);
      await writeKeyFile(o.pub, pub, false, !!o.force);
      process.stderr.write(`wrote HPKE key pair ${o.hpke} / ${o.pub} (${pub.kid})\n`);
    });

  program
    .command('seal')
    .description('encrypt a file so that only the given recipients can read it')
    .argument('<in>', 'input file, or - for stdin')
    .argument('<out>', 'sealed output file, or - for stdout')
    .requiredOption(
      '--to <recipient>',
      'kbs:///repo/type/tag=KEKFILE or hpke:PUBFILE (repeatable)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--chunk-size <size>', 'plaintext bytes per chunk (default 1MiB)')
    .option('--content-type <type>', 'media type recorded in the header')
    .option('--name <name>', 'original name recorded in the header (default: input file name)')
    .option('--workers <n>', 'worker threads (default: all cores for inputs ≥ 64 MiB)', workersOption)
    .option(
      '--ignore-kid',
      'seal to the kbs URI given in --to even where the KEK file’s kid names another resource',
    )
    .option('--force', 'overwrite an existing output')
    .option('-q, --quiet', 'no progress bar')
    .addHelpText(
      'after',
      '\nExample:\n  cloister seal --to kbs:///owner/models/kek1=owner.kek --to hpke:broker.pub model.gguf model.gguf.sealed',
    )
    .action(
      async (
        input: string,
        out: string,
        o: {
          to: string[];
          chunkSize?: string;
          contentType?: string;
          name?: string;
          workers?: number;
          ignoreKid?: boolean;
          force?: boolean;
          quiet?: boolean;
        },
      ) => {
        cleanupOnSignals();
        const recipients = [];
        for (const spec of o.to) recipients.push(await parseRecipient(spec, !!o.ignoreKid));
        const bar = progressBar('sealing', await sizeOf(input), !!o.quiet);
        await sealFile(input, out, {
          recipients,
          ...(o.chunkSize ? { chunkSize: parseSize(o.chunkSize) } : {}),
          ...(o.contentType ? { contentType: o.contentType } : {}),
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.workers !== undefined ? { workers: o.workers } : {}),
          force: !!o.force,
          onProgress: bar.update,
        });
        bar.finish();
      },
    );

  program
    .command('unseal')
    .description('decrypt a sealed file (verifying every chunk) with a KEK or HPKE private key')
    .argument('<in>', 'sealed input file, or - for stdin')
    .argument('<out>', 'plaintext output file, or - for stdout')
    .requiredOption('--key <file>', 'KEK file (kbs recipient) or HPKE private key file')
    .option('--range <a-b>', 'only plaintext bytes [a, b), decrypting only the chunks that hold them')
    .option('--workers <n>', 'worker threads (default: all cores for inputs ≥ 64 MiB)', workersOption)
    .option('--force', 'overwrite an existing output')
    .option('-q, --quiet', 'no progress bar')
    .addHelpText(
      'after',
      '\nA file output appears only after the last chunk has verified. To stdout, verified chunks are written\n' +
        'as they verify and a later failure exits non-zero: consumers of a pipe must check the exit status.\n\n' +
        'Examples:\n  cloister unseal --key owner.kek model.gguf.sealed model.gguf\n  cloister unseal --key broker.key --range 0-4096 model.gguf.sealed -',
    )
    .action(
      async (
        input: string,
        out: string,
        o: { key: string; range?: string; workers?: number; force?: boolean; quiet?: boolean },
      ) => {
        cleanupOnSignals();
        const key = await readKeyFile(o.key);
        if (key.kind === 'hpke-public')
          throw new FileError(`${o.key} is a public key; unsealing needs the private key`);
        if (o.range) {
          if (input === '-') throw new FileError('--range needs a sealed file, not stdin');
          const [a, b] = parseRange(o.range);
          await unsealRange(input, out, key, a, b, { force: !!o.force });
          return;
        }
        const bar = progressBar('unsealing', await sizeOf(input), !!o.quiet);
        await unsealFile(input, out, key, {
          force: !!o.force,
          onProgress: bar.update,
          ...(o.workers !== undefined ? { workers: o.workers } : {}),
        });
        bar.finish();
      },
    );

  program
    .command('inspect')
    .description('show a sealed file’s header (no key needed, no secrets shown)')
    .argument('<file>', 'sealed file')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExample:\n  cloister inspect model.gguf.sealed --json')
    .action(async (file: string, o: { json?: boolean }) => {
      const { header, fileSize } = await readHeader(file);
      const d = describeHeader(header, fileSize);
      if (o.json) {
        printJson(d);
        return;
      }
      const lines = [
        `format:      ${d.format}`,
        `suite:       ${d.suite}`,
        `chunk size:  ${header.chunkSize} bytes`,
        `plaintext:   ${header.plaintextLength === undefined ? 'not declared (sealed from a stream)' : `${header.plaintextLength} bytes`}`,
        `sealed size: ${fileSize} bytes`,
        `content:     ${header.contentType || '-'}`,
        `name:        ${header.name || '-'}`,
        'recipients:',
        ...header.recipients.map((r) => `  ${r.type.padEnd(5)} ${r.keyId}`),
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
