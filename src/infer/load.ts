/**
 * Loading a sealed model inside the TEE (Node-only): read its header, get its key (from the key
 * broker after attestation, or a local key in development), unseal it into the private in-memory
 * directory while hashing the sealed file (the digest clients pin), recognise the format and hand it
 * to its engine. GGUF stays in the private directory (llama.cpp maps it from there); an ONNX model
 * bundle (a tar of the model directory) is read into memory and its plaintext file wiped at once.
 */
import { open, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Header, UnsealKey } from '../seal/index.js';
import {
  openSealedPath,
  type SealedPath,
  sha256FileOffThread,
  type UnwrappedSealedPath,
} from '../seal/node.js';
import { zeroAndUnlink } from '../tee/index.js';
import type { ModelIdentity } from '../wire/index.js';
import type { EmbeddingEngine, TextEngine } from './engine/types.js';

export interface EngineLoaders {
  gguf(path: string): Promise<TextEngine>;
  onnxBundle(bundle: Uint8Array): Promise<EmbeddingEngine>;
  /** Starts whatever the engine for `format` needs before a model (runtime, native binding), if anything. */
  warmUp?(format: ModelIdentity['format']): Promise<void>;
}

export interface SealedModelOptions {
  file: string;
  /** The id clients name; default: the sealed name without its extension. */
  id?: string;
  key(header: Header): Promise<UnsealKey>;
  /** The private directory (on tmpfs) the plaintext goes to. */
  dir: string;
  loaders: EngineLoaders;
  log: (line: string) => void;
}

export interface LoadedModel {
  id: string;
  format: ModelIdentity['format'];
  /** `sha256:<hex>` of the sealed file. */
  digest: string;
  engine: TextEngine | EmbeddingEngine;
}

export class ModelLoadError extends Error {
  override name = 'ModelLoadError';
  constructor(
    readonly code: 'unknown-format' | 'raw-onnx' | 'bad-model' | 'changed',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const GGUF_MAGIC = [0x47, 0x47, 0x55, 0x46];

function formatOf(head: Uint8Array): ModelIdentity['format'] | 'onnx' | undefined {
  if (GGUF_MAGIC.every((b, i) => head[i] === b)) return 'gguf';
  if (new TextDecoder().decode(head.subarray(257, 262)) === 'ustar') return 'onnx-bundle';
  // An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
  if (head[0] === 0x08 && head.length > 2 && head[1]! < 0x20) return 'onnx';
  return undefined;
}

/** The id a sealed model is served under unless named: its sealed name without extensions. */
export function modelIdOf(header: Header, file: string): string {
  const name = header.name || basename(file).replace(/\.sealed$/, '');
  return name.replace(/\.(gguf|tar|onnx)$/i, '') || 'model';
}

let counter = 0;

/**
 * Order, for the cold start: the format is read from the first plaintext chunk (random access, one
 * chunk decrypted), so the engine's runtime can start loading on this thread while workers unseal the
 * model and hash the sealed file; the digest is awaited only once the engine holds the model.
 */
export async function loadSealedModel(o: SealedModelOptions): Promise<LoadedModel> {
  // The digest must describe the bytes that are unsealed, but the file is the host's: every read
  // below goes through one open descriptor (so renaming another file into place changes nothing),
  // and a write to the file while loading changes its ctime, which is compared at the end. Storage
  // changed underneath the guest's file system between the two reads is not seen (see the docs).
  const fh = await open(o.file, 'r');
  const pinned = process.platform === 'linux' ? `/proc/self/fd/${fh.fd}` : o.file;
  try {
    const before = await fh.stat();
    const model = await loadFrom(pinned, o);
    const after = await fh.stat();
    if (after.ctimeMs !== before.ctimeMs || after.size !== before.size) {
      await model.engine.close();
      throw new ModelLoadError('changed', `${o.file} changed while it was being loaded; not served`);
    }
    return model;
  } catch (e) {
    if (e instanceof Error && pinned !== o.file) {
      e.message = e.message.replaceAll(pinned, o.file);
      const io = e as NodeJS.ErrnoException;
      if (io.path === pinned) io.path = o.file;
    }
    throw e;
  } finally {
    await fh.close();
  }
}

/** Loads from `path` (the pinned descriptor); `o.file` is the name for messages. */
async function loadFrom(path: string, o: SealedModelOptions): Promise<LoadedModel> {
  // One parse of the header and one unwrap of the data key serve the peek, the unsealing and the id.
  const sealed = await openSealedPath(path);
  try {
    const file = await sealed.unwrap(await o.key(sealed.header));
    return await loadUnwrapped(path, sealed, file, o);
  } finally {
    await sealed.close();
  }
}

async function loadUnwrapped(
  path: string,
  sealed: SealedPath,
  file: UnwrappedSealedPath,
  o: SealedModelOptions,
): Promise<LoadedModel> {
  const reader = await file.reader();
  const head = await reader.read(0, Math.min(512, reader.plaintextLength));
  const format = formatOf(head);
  if (format === 'onnx') {
    throw new ModelLoadError(
      'raw-onnx',
      `${o.file} holds a bare ONNX model; an ONNX model is served with its tokenizer: seal a tar of the model directory (tar -cf model.tar model.onnx tokenizer.json tokenizer_config.json)`,
    );
  }
  if (format === undefined) {
    throw new ModelLoadError(
      'unknown-format',
      `${o.file} holds neither a GGUF model nor an ONNX model bundle (tar)`,
    );
  }
  const warm = o.loaders.warmUp?.(format);
  // Observed below; until then a failure must not surface as an unhandled rejection.
  warm?.catch(() => {});
  const digest = sha256FileOffThread(path);
  digest.catch(() => {});
  const out = join(o.dir, `model-${counter++}`);
  o.log(
    `unsealing ${o.file} (${(sealed.size / 2 ** 20).toFixed(1)} MiB, ${format}) into the private directory`,
  );
  const started = performance.now();
  await file.unsealTo(out);
  o.log(`unsealed in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  await warm;
  const id = o.id ?? modelIdOf(sealed.header, o.file);
  let engine: TextEngine | EmbeddingEngine;
  if (format === 'gguf') {
    engine = await o.loaders.gguf(out);
  } else {
    const bundle = new Uint8Array(await readFile(out));
    zeroAndUnlink(out);
    engine = await o.loaders.onnxBundle(bundle);
  }
  try {
    const d = await digest;
    o.log(`sealed digest ${d}`);
    return { id, format, digest: d, engine };
  } catch (e) {
    await engine.close();
    throw e;
  }
}
