/**
 * Assembles a running confidential inference server (Node-only): the model keys (from a key broker
 * after attestation, or one local key in development), the private directory the plaintext models are
 * unsealed into, the engines, the shared serving keys and replay store of replicas, the browser page,
 * and the HTTP server. Used by `cloister serve`; the CLI only parses flags and prints.
 */
import { readFile } from 'node:fs/promises';
import { checkListen, probeListen, readTlsFiles } from '../http/index.js';
import type { UnsealKey } from '../seal/index.js';
import type { KbsClient } from '../tee/index.js';
import { KekCache, PrivateDir, resourcePathOf, softwareIdentity } from '../tee/index.js';
import type { AttestationDocument } from '../wire/index.js';
import type { ServerTee } from './attestation.js';
import { realEngines } from './engines.js';
import { type LoadedModel, loadSealedModel, type SealedAdapter } from './load.js';
import { RequestQueue } from './queue.js';
import { type InferenceServerOptions, startInferenceServer } from './server.js';
import { decodeServingKeys, type SharedServingKeys } from './serving-keys.js';
import { loadUiAssets } from './ui.js';

export interface InferenceOptions
  extends Pick<
    InferenceServerOptions,
    | 'allowPlaintext'
    | 'host'
    | 'port'
    | 'tls'
    | 'insecureHttp'
    | 'replayWindowMs'
    | 'maxBodyBytes'
    | 'timeouts'
    | 'padStreamTo'
    | 'defaultMaxTokens'
    | 'log'
  > {
  /** Sealed model files: GGUF, or a tar of an ONNX model directory. */
  models: string[];
  /**
   * Sealed GGUF LoRA adapters applied, in order, to the one model of `models` (which must be a GGUF
   * base): checked against it before llama.cpp sees either, and attested with it.
   */
  adapters?: SealedAdapter[];
  tee: ServerTee;
  /**
   * Where the model keys come from: the key broker, which releases them after attesting this TEE (its
   * EAR token goes into the attestation document), or one local key (development).
   */
  keys: { broker: KbsClient } | { local: UnsealKey };
  /** Keys shared by replicas (serving-keys.ts): `kbs:///…` from the broker, or a file in the sample TEE. */
  servingKeys?: string;
  /** Redis that replicas sharing keys remember requests in (required with `servingKeys`). */
  replayRedis?: string;
  /** The memory file system the plaintext models are unsealed into. */
  privateDir: { parent: string; allowDisk: boolean };
  engines: { gpu: 'auto' | false; parallel: number; contextSize?: number; threads?: number };
  /** Requests waiting per model before 429. */
  maxQueued: number;
  /** Also serve the browser page (built by scripts/build-ui.mjs). */
  ui?: boolean;
}

export interface RunningInference {
  url: string;
  attestation: AttestationDocument;
  models: LoadedModel[];
  /** Stops the server, closes the engines, wipes the private directory and lets go of Redis. */
  close(): Promise<void>;
}

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
  const keys = await decodeServingKeys(bytes, source.startsWith('kbs:') ? source : `file:${source}`);
  log(`serving keys from ${source} (OHTTP key id ${keys.gateway.config.keyId})`);
  return keys;
}

export async function startInference(o: InferenceOptions): Promise<RunningInference> {
  const { log } = o;
  const adapters = o.adapters ?? [];
  if (adapters.length > 0 && o.models.length !== 1)
    throw new Error(
      `LoRA adapters apply to one base model: give exactly one GGUF model with them, not ${o.models.length}`,
    );
  // What would refuse to listen is refused now, not after minutes of unsealing and loading models.
  checkListen({
    host: o.host,
    port: o.port,
    tls: o.tls !== undefined,
    insecureHttp: o.insecureHttp === true,
  });
  if (o.tls) readTlsFiles(o.tls);
  await probeListen(o.host, o.port);
  const broker = 'broker' in o.keys ? o.keys.broker : undefined;
  let key: (h: Parameters<KekCache['forHeader']>[0], file: string) => Promise<UnsealKey>;
  if ('broker' in o.keys) {
    const keks = new KekCache(o.keys.broker);
    key = (h, file) => keks.forHeader(h, file);
  } else {
    const local = o.keys.local;
    key = async () => local;
  }
  const replayWindowMs = o.replayWindowMs ?? 120_000;
  const servingKeys = o.servingKeys
    ? await servingKeysFrom(o.servingKeys, broker, o.tee.cpu.insecure === true, log)
    : undefined;
  // The Redis client loads only for replicas that share keys.
  const replay =
    o.replayRedis && servingKeys
      ? await (await import('./replay-redis.js')).RedisReplayGuard.connect({
          url: o.replayRedis,
          windowMs: replayWindowMs,
          key: servingKeys.gateway.config,
        })
      : undefined;
  if (replay) log('replay protection shared through Redis');

  // What is opened so far, so that a failed start lets go of it (a reconnecting Redis client would
  // keep the process from exiting; plaintext models must not outlive it).
  let dir: PrivateDir | undefined;
  const loaded: LoadedModel[] = [];
  const release = async () => {
    await Promise.all(loaded.map((m) => m.engine.close()));
    await dir?.wipe();
    replay?.close();
  };
  try {
    dir = await PrivateDir.create({
      parent: o.privateDir.parent,
      allowDisk: o.privateDir.allowDisk,
      warn: log,
    });
    const loaders = realEngines({
      gpu: o.engines.gpu,
      parallel: o.engines.parallel,
      ...(o.engines.contextSize ? { contextSize: o.engines.contextSize } : {}),
      ...(o.engines.threads ? { threads: o.engines.threads } : {}),
    });
    for (const file of o.models) {
      const m = await loadSealedModel({
        file,
        key,
        dir: dir.path,
        loaders,
        log,
        ...(adapters.length > 0 ? { adapters } : {}),
      });
      if (loaded.some((x) => x.id === m.id)) {
        await m.engine.close();
        throw new Error(`two models are named '${m.id}'; rename one when sealing`);
      }
      log(
        `model '${m.id}' (${m.format}) loaded${m.adapters ? ` with ${m.adapters.length} LoRA adapter(s)` : ''}`,
      );
      loaded.push(m);
    }
    const created = Math.floor(Date.now() / 1000);
    const ui = o.ui ? await loadUiAssets() : undefined;
    const server = await startInferenceServer({
      models: loaded.map((m) => ({
        ...m,
        created,
        queue: new RequestQueue({ concurrency: m.engine.parallel, maxQueued: o.maxQueued }),
      })),
      tee: o.tee,
      ear: broker ? await broker.token() : null,
      software: await softwareIdentity(),
      ...(servingKeys ? { keys: servingKeys } : {}),
      ...(replay ? { replay } : {}),
      allowPlaintext: o.allowPlaintext,
      host: o.host,
      port: o.port,
      ...(o.tls ? { tls: o.tls } : {}),
      ...(o.insecureHttp ? { insecureHttp: true } : {}),
      replayWindowMs,
      ...(o.maxBodyBytes !== undefined ? { maxBodyBytes: o.maxBodyBytes } : {}),
      ...(o.timeouts ? { timeouts: o.timeouts } : {}),
      ...(o.padStreamTo !== undefined ? { padStreamTo: o.padStreamTo } : {}),
      ...(o.defaultMaxTokens !== undefined ? { defaultMaxTokens: o.defaultMaxTokens } : {}),
      ...(ui ? { ui } : {}),
      log,
    });
    return {
      url: server.url,
      attestation: server.attestation,
      models: loaded,
      async close() {
        await server.close();
        await release();
      },
    };
  } catch (e) {
    await release().catch(() => {});
    throw e;
  }
}
