/**
 * `cloister serve`: the confidential inference server (docs/confidential-inference.md). Inside a TEE
 * it attests to the key broker, gets the model keys, unseals the models into memory, makes its OHTTP
 * and receipt keys, binds them with the models' digests and its software identity into fresh evidence,
 * and serves the OpenAI API through Oblivious HTTP.
 */
import { readFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import type { LoadedModel } from '../infer/load.js';
import type { SharedServingKeys } from '../infer/serving-keys.js';
import type { UnsealKey } from '../seal/keys.js';
import type { KbsClient } from '../tee/kbs-client.js';
import type { KekCache } from '../tee/keys.js';
import { brokerFor, type TeeCliOptions, teeFor, teeOptions } from './agent.js';
import { integerOption } from './numbers.js';

interface ServeCliOptions extends Omit<TeeCliOptions, 'kbs'> {
  kbs?: string;
  key?: string;
  model: string[];
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

/** The shared serving keys: a broker resource (after attestation), or a local file in development. */
export async function servingKeysFrom(
  source: string,
  broker: KbsClient | undefined,
  insecureTee: boolean,
  log: (line: string) => void,
): Promise<SharedServingKeys> {
  let bytes: Uint8Array;
  if (source.startsWith('kbs:')) {
    if (!broker) throw new Error(`--serving-keys ${source} needs --kbs URL (the broker that holds it)`);
    const { resourcePathOf } = await import('../tee/keys.js');
    bytes = await broker.getResource(resourcePathOf(source));
  } else {
    if (broker)
      throw new Error(`--serving-keys ${source}: with --kbs the shared keys come from the broker (kbs:///…)`);
    // Keys from the operator's own file would let the operator read every prompt.
    if (!insecureTee)
      throw new Error(`--serving-keys ${source}: a key file is for development in the sample TEE only`);
    log('WARNING: --serving-keys: the shared keys come from a local file, not from a key broker');
    try {
      bytes = new Uint8Array(await readFile(source));
    } catch (e) {
      throw new Error(`cannot read --serving-keys ${source}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  }
  const { decodeServingKeys } = await import('../infer/serving-keys.js');
  const keys = await decodeServingKeys(bytes, source.startsWith('kbs:') ? source : `file:${source}`);
  log(`serving keys from ${source} (OHTTP key id ${keys.gateway.config.keyId})`);
  return keys;
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
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', '8443')
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
        '  cloister serve --kbs https://kbs.example:8080 --model llama.gguf.sealed --port 8443\n' +
        '  cloister serve --tee sample --key model.kek.jwk --model tiny.gguf.sealed --ui --port 8080   # development\n' +
        '\nClients: cloister chat --url http://HOST:PORT, or the SDK (cloister/client) with the openai package.',
    )
    .exitOverride()
    .action(async (opts: ServeCliOptions) => {
      // The engines (llama.cpp, ONNX Runtime), the server and the agent load when this verb runs.
      const { KekCache } = await import('../tee/keys.js');
      const { onTerminationSignal, PrivateDir } = await import('../tee/private-dir.js');
      const { realEngines } = await import('../infer/engines.js');
      const { loadSealedModel } = await import('../infer/load.js');
      const { RequestQueue } = await import('../infer/queue.js');
      const { RedisReplayGuard } = await import('../infer/replay-redis.js');
      const { startInferenceServer } = await import('../infer/server.js');
      const { softwareIdentity } = await import('../infer/software.js');
      const { keyFromJwk } = await import('../seal/keys.js');
      const log = (line: string) => process.stderr.write(`cloister serve: ${line}\n`);
      if (opts.model.length === 0) throw new Error('give at least one --model FILE.sealed');
      if (!opts.kbs === !opts.key)
        throw new Error('give exactly one of --kbs URL (production) or --key FILE (development)');
      if (opts.initData && !opts.kbs)
        throw new Error('--init-data is for the key broker: it needs --kbs URL');
      const parallel = integerOption(opts.parallel, '--parallel', 1);
      const maxQueued = integerOption(opts.maxQueued, '--max-queued', 0);
      const tee = await teeFor(opts, log);
      log(`TEE: ${tee.kind} (${tee.attester.source})`);
      if (tee.attester.insecure)
        log('WARNING: the sample TEE is software only; clients must opt in to trust it');
      const broker = opts.kbs ? await brokerFor({ ...opts, kbs: opts.kbs }, tee) : undefined;
      let key: (h: Parameters<KekCache['forHeader']>[0], file: string) => Promise<UnsealKey>;
      if (broker) {
        const keys = new KekCache(broker);
        key = (h, file) => keys.forHeader(h, file);
      } else {
        log('WARNING: --key: the model key comes from a local file, not from a key broker after attestation');
        const k = keyFromJwk(await readFile(opts.key!, 'utf8'), opts.key!);
        if (k.kind === 'hpke-public')
          throw new Error(`${opts.key} is a public key; unsealing needs the KEK or the HPKE private key`);
        key = async () => k;
      }
      if (opts.replayRedis && !opts.servingKeys)
        throw new Error('--replay-redis is for replicas that share keys: it needs --serving-keys');
      if (opts.servingKeys && !opts.replayRedis)
        throw new Error(
          '--serving-keys needs --replay-redis URL: shared keys outlive this process, so without a shared replay store a captured request could be answered again by another replica or after a restart',
        );
      const timeouts = {
        requestMs: integerOption(opts.requestTimeout, '--request-timeout', 1) * 1000,
        headersMs: integerOption(opts.headersTimeout, '--headers-timeout', 1) * 1000,
        keepAliveMs: integerOption(opts.keepAliveTimeout, '--keep-alive-timeout', 1) * 1000,
      };
      const replayWindowMs = integerOption(opts.replayWindow, '--replay-window', 1) * 1000;
      const keys = opts.servingKeys
        ? await servingKeysFrom(opts.servingKeys, broker, tee.attester.insecure === true, log)
        : undefined;
      const replay =
        opts.replayRedis && keys
          ? await RedisReplayGuard.connect({
              url: opts.replayRedis,
              windowMs: replayWindowMs,
              key: keys.gateway.config,
            })
          : undefined;
      if (replay) log('replay protection shared through Redis');
      // A Redis client that is reconnecting would keep a process that failed to start from exiting.
      const start = async () => {
        const dir = await PrivateDir.create({
          parent: opts.privateDir,
          allowDisk: opts.allowDisk === true,
          warn: log,
        });
        const loaders = realEngines({
          gpu: opts.engineGpu === 'off' ? false : 'auto',
          parallel,
          ...(opts.context ? { contextSize: integerOption(opts.context, '--context', 1) } : {}),
          ...(opts.threads ? { threads: integerOption(opts.threads, '--threads', 1) } : {}),
        });
        const loaded: LoadedModel[] = [];
        for (const file of opts.model) {
          const m = await loadSealedModel({ file, key: (h) => key(h, file), dir: dir.path, loaders, log });
          if (loaded.some((x) => x.id === m.id))
            throw new Error(`two models are named '${m.id}'; rename one when sealing`);
          log(`model '${m.id}' (${m.format}) loaded`);
          loaded.push(m);
        }
        const created = Math.floor(Date.now() / 1000);
        const ui = opts.ui ? await (await import('../infer/ui.js')).loadUiAssets() : undefined;
        const server = await startInferenceServer({
          models: loaded.map((m) => ({
            ...m,
            created,
            queue: new RequestQueue({ concurrency: m.engine.parallel, maxQueued }),
          })),
          tee: { cpu: tee.attester, ...(tee.gpu ? { gpu: tee.gpu } : {}) },
          ear: broker ? await broker.token() : null,
          software: await softwareIdentity(),
          ...(keys ? { keys } : {}),
          allowPlaintext: opts.allowPlaintext === true,
          host: opts.host,
          port: integerOption(opts.port, '--port', 0, 65535),
          replayWindowMs,
          ...(replay ? { replay } : {}),
          maxBodyBytes: integerOption(opts.maxBody, '--max-body', 1),
          timeouts,
          padStreamTo: integerOption(opts.padStream, '--pad-stream', 0),
          defaultMaxTokens: integerOption(opts.maxTokens, '--max-tokens', 1),
          ...(ui ? { ui } : {}),
          log,
        });
        return { dir, loaded, server, ui };
      };
      let started: Awaited<ReturnType<typeof start>>;
      try {
        started = await start();
      } catch (e) {
        replay?.close();
        throw e;
      }
      const { dir, loaded, server, ui } = started;
      log(
        `listening on ${server.url} (attestation: ${server.url}/v1/attestation${ui ? `, page: ${server.url}/` : ''})`,
      );
      if (opts.allowPlaintext) log('WARNING: --allow-plaintext: unencrypted requests are accepted too');
      await new Promise<void>((resolve) => {
        const off = onTerminationSignal((sig) => {
          off();
          log(`${sig}: stopping`);
          void server
            .close()
            .then(() => Promise.all(loaded.map((m) => m.engine.close())))
            .then(() => dir.wipe())
            .then(() => replay?.close())
            .then(resolve);
        });
      });
    });
}
