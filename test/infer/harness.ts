import { offlineSource } from '../../src/attest/collateral/index.js';
import { parseClientPolicy } from '../../src/client/policy.js';
import type { ServerTee } from '../../src/infer/attestation.js';
import type { Engine } from '../../src/infer/engine/types.js';
import { RequestQueue } from '../../src/infer/queue.js';
import {
  type InferenceServer,
  type InferenceServerOptions,
  startInferenceServer,
} from '../../src/infer/server.js';
import {
  decodeServingKeys,
  encodeServingKeys,
  generateServingKeys,
  type SharedServingKeys,
} from '../../src/infer/serving-keys.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import type { AdapterIdentity } from '../../src/wire/index.js';
import { HashEmbeddingEngine, ScriptedTextEngine } from './fake-engines.js';

export const TEXT_DIGEST = `sha256:${'a1'.repeat(32)}`;
export const EMBED_DIGEST = `sha256:${'b2'.repeat(32)}`;

export interface Harness {
  server: InferenceServer;
  text: ScriptedTextEngine;
  embed: HashEmbeddingEngine;
}

export async function startHarness(
  o: Partial<InferenceServerOptions> & {
    text?: ScriptedTextEngine;
    /** LoRA adapters the text model is attested with (nothing is applied: the engine is scripted). */
    textAdapters?: AdapterIdentity[];
    maxQueued?: number;
    tee?: ServerTee;
  } = {},
): Promise<Harness> {
  const text = o.text ?? new ScriptedTextEngine();
  const embed = new HashEmbeddingEngine();
  const served = (id: string, engine: Engine, digest: string, format: 'gguf' | 'onnx-bundle') => ({
    id,
    engine,
    digest,
    format,
    created: 1_700_000_000,
    queue: new RequestQueue({ concurrency: engine.parallel, maxQueued: o.maxQueued ?? 16 }),
  });
  const server = await startInferenceServer({
    models: [
      {
        ...served('tiny-llama', text, TEXT_DIGEST, 'gguf'),
        ...(o.textAdapters ? { adapters: o.textAdapters } : {}),
      },
      served('tiny-embed', embed, EMBED_DIGEST, 'onnx-bundle'),
    ],
    tee: o.tee ?? { cpu: new InsecureSampleAttester() },
    ear: null,
    software: { name: 'cloister', version: '0.1.0', digest: `sha256:${'cd'.repeat(32)}` },
    allowPlaintext: o.allowPlaintext ?? false,
    host: '127.0.0.1',
    port: 0,
    log: () => {},
    ...(o.replayWindowMs ? { replayWindowMs: o.replayWindowMs } : {}),
    ...(o.maxBodyBytes ? { maxBodyBytes: o.maxBodyBytes } : {}),
    ...(o.collateralFetch ? { collateralFetch: o.collateralFetch } : {}),
    ...(o.padStreamTo !== undefined ? { padStreamTo: o.padStreamTo } : {}),
    ...(o.ui ? { ui: o.ui } : {}),
    ...(o.keys ? { keys: o.keys } : {}),
    ...(o.replay ? { replay: o.replay } : {}),
    ...(o.timeouts ? { timeouts: o.timeouts } : {}),
    ...(o.tls ? { tls: o.tls } : {}),
    ...(o.host ? { host: o.host } : {}),
    ...(o.insecureHttp ? { insecureHttp: true } : {}),
  });
  return { server, text, embed };
}

/** The development policy that accepts the sample TEE (which every default refuses). */
export const SAMPLE_POLICY = parseClientPolicy({ tees: ['sample'], minStatus: 'warning' });
export const NO_COLLATERAL = offlineSource;

export const KEYS_SOURCE = 'kbs:///acme/serving/keys';

/** Shared serving keys for the harness's two models, as replicas would fetch them from KEYS_SOURCE. */
export async function harnessServingKeys(
  o: { source?: string; plaintextAllowed?: boolean } = {},
): Promise<SharedServingKeys> {
  const keys = await generateServingKeys({ exportable: true });
  const doc = await encodeServingKeys(keys, {
    models: [
      { id: 'tiny-llama', digest: TEXT_DIGEST },
      { id: 'tiny-embed', digest: EMBED_DIGEST },
    ],
    plaintextAllowed: o.plaintextAllowed ?? false,
  });
  return decodeServingKeys(doc, o.source ?? KEYS_SOURCE);
}

/** SAMPLE_POLICY that also accepts keys shared through KEYS_SOURCE. */
export const SHARED_KEYS_POLICY = parseClientPolicy({
  tees: ['sample'],
  minStatus: 'warning',
  sharedKeys: [KEYS_SOURCE],
});
