/**
 * `cloister serve`: the confidential inference server (docs/confidential-inference.md). Inside a TEE
 * it attests to the key broker, gets the model keys, unseals the models into memory, makes its OHTTP
 * and receipt keys, binds them with the models' digests and its software identity into fresh evidence,
 * and serves the OpenAI API through Oblivious HTTP. The assembly is src/infer/app.ts; this is the
 * flags and the output.
 */
import { readFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import type { InferenceOptions } from '../infer/node.js';
import { isLoraScale, LORA_SCALE_RANGE } from '../wire/index.js';
import { brokerFor, type TeeCliOptions, teeFor, teeOptions } from './agent.js';
import { integerOption } from './numbers.js';
import {
  insecureHttpOption,
  type TlsServeCliOptions,
  tlsCertOption,
  tlsFilesOf,
  tlsKeyOption,
} from './tls.js';

interface ServeCliOptions extends Omit<TeeCliOptions, 'kbs'>, TlsServeCliOptions {
  kbs?: string;
  key?: string;
  model: string[];
  lora: string[];
  host: string;
  port: string;
  ui?: boolean;
  allowPlaintext?: boolean;
  parallel: string;
  maxQueued: string;
  context?: string;
  threads?: string;
  maxTokens: string;
  replayWindow: string;
  padStream: string;
  maxBody: string;
  privateDir: string;
  allowDisk?: boolean;
  engineGpu: 'auto' | 'off';
  servingKeys?: string;
  replayRedis?: string;
  requestTimeout: string;
  headersTimeout: string;
  keepAliveTimeout: string;
}

const collect = (v: string, prev: string[]) => [...prev, v];

/**
 * `--lora FILE[:scale]`: the text after the last ':' is the scale when it reads as a number (a path
 * may hold ':' itself); that number must lie in [LORA_SCALE_MIN, LORA_SCALE_MAX].
 */
export function parseLoraSpec(spec: string): { file: string; scale: number } {
  const i = spec.lastIndexOf(':');
  const tail = i < 0 ? '' : spec.slice(i + 1);
  // A tail written as a number (infinities and NaN included) is the scale, and checked as one, so
  // that "a.sealed:-1" or "a.sealed:1e999" is refused rather than read as part of a file name.
  const numeric = /^[-+]?((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|inf|infinity|nan)$/i.test(tail);
  if (!numeric) {
    if (spec === '' || spec.endsWith(':'))
      throw new Error(`--lora ${spec}: give FILE or FILE:SCALE (${LORA_SCALE_RANGE})`);
    return { file: spec, scale: 1 };
  }
  const scale = Number(tail);
  if (!isLoraScale(scale))
    throw new Error(`--lora ${spec}: the scale after ':' must be ${LORA_SCALE_RANGE}, got "${tail}"`);
  if (i === 0) throw new Error(`--lora ${spec}: no adapter file before ':'`);
  return { file: spec.slice(0, i), scale };
}

export function registerServe(program: Command): void {
  teeOptions(
    program
      .command('serve')
      .description('inside a TEE: serve sealed models through an attested, end-to-end encrypted OpenAI API'),
    false,
  )
    .option('--key <file>', 'development only: unseal with this local key instead of asking a key broker')
    .option(
      '--model <file>',
      'a sealed model (repeatable): GGUF, or a tar of an ONNX model directory',
      collect,
      [],
    )
    .option(
      '--lora <file[:scale]>',
      `a sealed GGUF LoRA adapter for the one --model (repeatable, applied in order); scale ${LORA_SCALE_RANGE}, default 1`,
      collect,
      [],
    )
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', '8443')
    .addOption(tlsCertOption())
    .addOption(tlsKeyOption())
    .addOption(insecureHttpOption())
    .option('--ui', 'also serve the browser page at / (it verifies the server in the browser)')
    .option('--allow-plaintext', 'also accept unencrypted /v1 requests (announced in the attestation)')
    .option('--parallel <n>', 'generations per model at once', '1')
    .option('--max-queued <n>', 'requests waiting per model before 429', '64')
    .option('--context <n>', 'tokens per sequence (default: the model’s own, capped at 8192)')
    .option('--threads <n>', 'CPU threads per evaluation (default: every core; fewer on a shared machine)')
    .option('--max-tokens <n>', 'max_tokens when a request gives none', '256')
    .option('--replay-window <s>', 'seconds the OHTTP gateway remembers requests (Date skew: half)', '120')
    .option('--max-body <bytes>', 'largest request body', String(1 << 20))
    .option(
      '--request-timeout <s>',
      'seconds a client has to send a whole request, headers and body (slow uploads get 408); responses are not timed',
      '60',
    )
    .option('--headers-timeout <s>', 'seconds a client has to send the request headers', '30')
    .option('--keep-alive-timeout <s>', 'seconds an idle kept-alive connection stays open', '5')
    .option(
      '--pad-stream <bytes>',
      'pad each streamed event to a multiple of this (hides token lengths; 0: off)',
      '64',
    )
    .option(
      '--serving-keys <source>',
      'OHTTP and receipt keys shared by replicas behind one load balancer: kbs:///repo/type/tag (from the broker after attestation), or a file (development, sample TEE only); default: fresh keys made here',
    )
    .option(
      '--replay-redis <url>',
      'with --serving-keys (required there): remember requests in this Redis (redis://host:port/db), shared by the replicas, so a request replayed to another replica, or after a restart, is refused too',
    )
    .option('--private-dir <dir>', 'memory file system for the plaintext model', '/dev/shm')
    .option('--allow-disk', 'accept a --private-dir that is not tmpfs/ramfs (plaintext may reach a disk)')
    .addOption(
      new Option('--engine-gpu <mode>', 'run models on a GPU when one works')
        .choices(['auto', 'off'])
        .default('auto'),
    )
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  cloister serve --kbs https://kbs.example:8080 --model llama.gguf.sealed \\\n' +
        '    --host 0.0.0.0 --port 8443 --tls-cert llm.crt --tls-key llm.key\n' +
        '  cloister serve --tee sample --key model.kek.jwk --model tiny.gguf.sealed --ui --port 8443   # development\n' +
        '  cloister serve --kbs https://kbs.vendor.example --kbs-route acme=https://kbs.acme.example \\\n' +
        '    --model base.gguf.sealed --lora acme-adapter.gguf.sealed:0.8   # base from the vendor, adapter from acme\n' +
        '\nClients: cloister chat --url https://HOST:PORT (http://127.0.0.1:PORT without TLS), or the SDK\n' +
        '(cloister/client) with the openai package; --cacert FILE trusts a private CA.',
    )
    .exitOverride()
    .action(async (opts: ServeCliOptions) => {
      const log = (line: string) => process.stderr.write(`cloister serve: ${line}\n`);
      // Every flag is checked before anything heavy loads, so that a typo is refused at once.
      if (opts.model.length === 0) throw new Error('give at least one --model FILE.sealed');
      const adapters = opts.lora.map(parseLoraSpec);
      if (adapters.length > 0 && opts.model.length !== 1)
        throw new Error(
          `--lora applies to one base model: give exactly one --model (a GGUF base), not ${opts.model.length}`,
        );
      // CLOISTER_KBS_URL names the broker when neither --kbs nor a development --key does.
      if (!opts.kbs && !opts.key && process.env.CLOISTER_KBS_URL) opts.kbs = process.env.CLOISTER_KBS_URL;
      if (!opts.kbs === !opts.key)
        throw new Error('give exactly one of --kbs URL (production) or --key FILE (development)');
      if (opts.initData && !opts.kbs)
        throw new Error('--init-data is for the key broker: it needs --kbs URL');
      if (opts.kbsRoute?.length && !opts.kbs)
        throw new Error('--kbs-route sends some keys to another key broker: it needs --kbs URL');
      if (opts.replayRedis && !opts.servingKeys)
        throw new Error('--replay-redis is for replicas that share keys: it needs --serving-keys');
      if (opts.servingKeys && !opts.replayRedis)
        throw new Error(
          '--serving-keys needs --replay-redis URL: shared keys outlive this process, so without a shared replay store a captured request could be answered again by another replica or after a restart',
        );
      const tls = tlsFilesOf(opts);
      const settings = {
        engines: {
          gpu: opts.engineGpu === 'off' ? (false as const) : ('auto' as const),
          parallel: integerOption(opts.parallel, '--parallel', 1),
          ...(opts.context ? { contextSize: integerOption(opts.context, '--context', 1) } : {}),
          ...(opts.threads ? { threads: integerOption(opts.threads, '--threads', 1) } : {}),
        },
        maxQueued: integerOption(opts.maxQueued, '--max-queued', 0),
        port: integerOption(opts.port, '--port', 0, 65535),
        replayWindowMs: integerOption(opts.replayWindow, '--replay-window', 1) * 1000,
        maxBodyBytes: integerOption(opts.maxBody, '--max-body', 1),
        timeouts: {
          requestMs: integerOption(opts.requestTimeout, '--request-timeout', 1) * 1000,
          headersMs: integerOption(opts.headersTimeout, '--headers-timeout', 1) * 1000,
          keepAliveMs: integerOption(opts.keepAliveTimeout, '--keep-alive-timeout', 1) * 1000,
        },
        padStreamTo: integerOption(opts.padStream, '--pad-stream', 0),
        defaultMaxTokens: integerOption(opts.maxTokens, '--max-tokens', 1),
      };
      const tee = await teeFor(opts, log);
      log(`TEE: ${tee.kind} (${tee.attester.source})`);
      if (tee.attester.insecure)
        log('WARNING: the sample TEE is software only; clients must opt in to trust it');
      let keys: InferenceOptions['keys'];
      if (opts.kbs) keys = { broker: await brokerFor({ ...opts, kbs: opts.kbs }, tee) };
      else {
        log('WARNING: --key: the model key comes from a local file, not from a key broker after attestation');
        const { keyFromJwk } = await import('../seal/index.js');
        const k = keyFromJwk(await readFile(opts.key!, 'utf8'), opts.key!);
        if (k.kind === 'hpke-public')
          throw new Error(`${opts.key} is a public key; unsealing needs the KEK or the HPKE private key`);
        keys = { local: k };
      }
      // The engines (llama.cpp, ONNX Runtime), the server and the agent load when this verb runs.
      const { startInference } = await import('../infer/node.js');
      const { onTerminationSignal } = await import('../tee/index.js');
      const inference = await startInference({
        ...settings,
        models: opts.model,
        ...(adapters.length > 0 ? { adapters } : {}),
        tee: { cpu: tee.attester, ...(tee.gpu ? { gpu: tee.gpu } : {}) },
        keys,
        ...(opts.servingKeys ? { servingKeys: opts.servingKeys } : {}),
        ...(opts.replayRedis ? { replayRedis: opts.replayRedis } : {}),
        privateDir: { parent: opts.privateDir, allowDisk: opts.allowDisk === true },
        ui: opts.ui === true,
        allowPlaintext: opts.allowPlaintext === true,
        host: opts.host,
        ...(tls ? { tls } : {}),
        ...(opts.insecureHttp ? { insecureHttp: true } : {}),
        log,
      });
      const { url } = inference;
      log(`listening on ${url} (attestation: ${url}/v1/attestation${opts.ui ? `, page: ${url}/` : ''})`);
      if (opts.allowPlaintext) log('WARNING: --allow-plaintext: unencrypted requests are accepted too');
      await new Promise<void>((resolve) => {
        const off = onTerminationSignal((sig) => {
          off();
          log(`${sig}: stopping`);
          void inference.close().then(resolve);
        });
      });
    });
}
