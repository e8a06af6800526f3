/**
 * Loading a sealed model inside the TEE (Node-only): read its header, get its key (from the key
 * broker after attestation, or a local key in development), unseal it into the private in-memory
 * directory while hashing the sealed file (the digest clients pin), recognise the format and hand it
 * to its engine. GGUF stays in the private directory (llama.cpp maps it from there); an ONNX model
 * bundle (a tar of the model directory) is read into memory and its plaintext file wiped at once.
 *
 * LoRA adapters (`cloister serve --lora`) go with one GGUF base: each sealed file is read once, whole,
 * then hashed and unsealed from that one buffer, and checked whole (a GGUF LoRA adapter, every value
 * finite, every adapted tensor one of the base's with its shape) against the base's header, read from the sealed base before anything is unsealed to
 * the private directory; only then do the base and the adapters reach it and llama.cpp. llama.cpp
 * copies an adapter's values when the context is made, so its plaintext file is wiped right after.
 * On every failure (a sealed file changed while loading included) the plaintext written so far is
 * zeroed and removed.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { ChunkAuthError, type Header, openSealed, SealFormatError, type UnsealKey } from '../seal/index.js';
import {
  bestChunkCipher,
  openSealedPath,
  type SealedPath,
  sha256FileOffThread,
  type UnwrappedSealedPath,
} from '../seal/node.js';
import { zeroAndUnlink } from '../tee/index.js';
import {
  type AdapterIdentity,
  checkLoraAgainstBase,
  GgufError,
  type GgufInfo,
  isLoraScale,
  LORA_SCALE_RANGE,
  LoraAdapterError,
  type ModelIdentity,
  readGgufInfo,
  readLoraAdapter,
} from '../wire/index.js';
import type { EmbeddingEngine, TextEngine } from './engine/types.js';

/** A LoRA adapter file for the engine, and the scale it is applied with. */
export interface EngineAdapter {
  path: string;
  scale: number;
}

export interface EngineLoaders {
  /** A GGUF model, with the LoRA adapters (already checked against it) applied to every generation. */
  gguf(path: string, adapters?: readonly EngineAdapter[]): Promise<TextEngine>;
  onnxBundle(bundle: Uint8Array): Promise<EmbeddingEngine>;
  /** Starts whatever the engine for `format` needs before a model (runtime, native binding), if anything. */
  warmUp?(format: ModelIdentity['format']): Promise<void>;
}

export interface SealedModelOptions {
  file: string;
  /** The id clients name; default: the sealed name without its extension. */
  id?: string;
  /** The key for a sealed file's header; `file` names the file (the model or one of its adapters). */
  key(header: Header, file: string): Promise<UnsealKey>;
  /** The private directory (on tmpfs) the plaintext goes to. */
  dir: string;
  loaders: EngineLoaders;
  log: (line: string) => void;
  /** Sealed GGUF LoRA adapters for this (GGUF) model, applied in this order. */
  adapters?: readonly SealedAdapter[];
}

export interface SealedAdapter {
  /** The sealed adapter file. */
  file: string;
  /** The scale it is loaded with (LORA_SCALE_MIN to LORA_SCALE_MAX; 1 applies it as trained). */
  scale: number;
}

export interface LoadedModel {
  id: string;
  format: ModelIdentity['format'];
  /** `sha256:<hex>` of the sealed file. */
  digest: string;
  /** The LoRA adapters applied, `sha256:<hex>` of each sealed file; absent when none. */
  adapters?: AdapterIdentity[];
  engine: TextEngine | EmbeddingEngine;
}

/**
 * Why a model was not loaded: `unknown-format`, `raw-onnx` (a bare ONNX file), `bad-model`, `changed`
 * (the host changed a sealed file while it was read), `bad-adapter` (a LoRA adapter that is not one,
 * is broken, or is made for another base; or adapters on a model that is not GGUF).
 */
export type ModelLoadCode = 'unknown-format' | 'raw-onnx' | 'bad-model' | 'changed' | 'bad-adapter';

export class ModelLoadError extends Error {
  override name = 'ModelLoadError';
  constructor(
    readonly code: ModelLoadCode,
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

/** A sealed file opened once: every read goes through `path` (the descriptor), `file` names it. */
interface Pinned {
  file: string;
  path: string;
  fh: FileHandle;
  ctimeMs: number;
  size: number;
}

async function pin(file: string): Promise<Pinned> {
  const fh = await open(file, 'r');
  try {
    const st = await fh.stat();
    const path = process.platform === 'linux' ? `/proc/self/fd/${fh.fd}` : file;
    return { file, path, fh, ctimeMs: st.ctimeMs, size: st.size };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

async function unchanged(p: Pinned): Promise<boolean> {
  const st = await p.fh.stat();
  return st.ctimeMs === p.ctimeMs && st.size === p.size;
}

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
  // The same holds for every adapter.
  const pinned: Pinned[] = [];
  try {
    pinned.push(await pin(o.file));
    for (const a of o.adapters ?? []) pinned.push(await pin(a.file));
    const [model, ...adapters] = pinned as [Pinned, ...Pinned[]];
    // Checked once the engine holds the model, inside the load, so that a change found here wipes
    // the plaintext it wrote like any other failure.
    const checkUnchanged = async () => {
      for (const p of pinned) {
        if (!(await unchanged(p)))
          throw new ModelLoadError('changed', `${p.file} changed while it was being loaded; not served`);
      }
    };
    return await loadFrom(model, adapters, o, checkUnchanged);
  } catch (e) {
    if (e instanceof Error) {
      for (const p of pinned) {
        if (p.path === p.file) continue;
        e.message = e.message.replaceAll(p.path, p.file);
        const io = e as NodeJS.ErrnoException;
        if (io.path === p.path) io.path = p.file;
      }
    }
    throw e;
  } finally {
    for (const p of pinned) await p.fh.close();
  }
}

/** Loads from the pinned descriptors. */
async function loadFrom(
  model: Pinned,
  adapters: Pinned[],
  o: SealedModelOptions,
  checkUnchanged: () => Promise<void>,
): Promise<LoadedModel> {
  // One parse of the header and one unwrap of the data key serve the peek, the unsealing and the id.
  const sealed = await openSealedPath(model.path);
  try {
    const file = await sealed.unwrap(await o.key(sealed.header, o.file));
    return await loadUnwrapped(model.path, sealed, file, adapters, o, checkUnchanged);
  } finally {
    await sealed.close();
  }
}

/** The plaintext files this load wrote, zeroed and removed when it fails. */
function wipeAll(paths: string[]): void {
  for (const p of paths.splice(0)) {
    try {
      zeroAndUnlink(p);
    } catch {
      // Already gone, or not ours to remove: the private directory is wiped as a whole on exit too.
    }
  }
}

async function loadUnwrapped(
  path: string,
  sealed: SealedPath,
  file: UnwrappedSealedPath,
  adapterFiles: Pinned[],
  o: SealedModelOptions,
  checkUnchanged: () => Promise<void>,
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
  if (adapterFiles.length > 0 && format !== 'gguf')
    throw new ModelLoadError(
      'bad-adapter',
      `${o.file} is an ONNX model bundle; LoRA adapters (--lora) apply to a GGUF base model only`,
    );
  const written: string[] = [];
  const checked: CheckedAdapter[] = [];
  try {
    if (adapterFiles.length > 0) {
      const base = await baseHeader(reader, o.file);
      for (const [i, a] of adapterFiles.entries()) {
        checked.push(await checkedAdapter(a, o.adapters![i]!.scale, base, o));
      }
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
    written.push(out);
    await file.unsealTo(out);
    o.log(`unsealed in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    await warm;
    const id = o.id ?? modelIdOf(sealed.header, o.file);
    let engine: TextEngine | EmbeddingEngine;
    if (format === 'gguf') {
      const engineAdapters: EngineAdapter[] = [];
      for (const a of checked) {
        const p = join(o.dir, `adapter-${counter++}`);
        written.push(p);
        await writeFile(p, a.bytes, { flag: 'wx', mode: 0o600 });
        a.bytes.fill(0);
        engineAdapters.push({ path: p, scale: a.scale });
      }
      engine = await o.loaders.gguf(out, engineAdapters);
      // llama.cpp holds the adapters' values now: their plaintext files go at once.
      wipeAll(written.splice(1));
    } else {
      const bundle = new Uint8Array(await readFile(out));
      written.length = 0;
      zeroAndUnlink(out);
      engine = await o.loaders.onnxBundle(bundle);
    }
    try {
      const d = await digest;
      await checkUnchanged();
      const adapters: AdapterIdentity[] = [];
      for (const a of checked) adapters.push({ digest: a.digest, scale: a.scale });
      o.log(`sealed digest ${d}`);
      for (const [i, a] of adapters.entries())
        o.log(`adapter ${adapterFiles[i]!.file}: sealed digest ${a.digest}, scale ${a.scale}`);
      return { id, format, digest: d, ...(adapters.length > 0 ? { adapters } : {}), engine };
    } catch (e) {
      await engine.close();
      throw e;
    }
  } catch (e) {
    wipeAll(written);
    throw e;
  } finally {
    for (const a of checked) a.bytes.fill(0);
  }
}

interface CheckedAdapter {
  /** The adapter's plaintext (zeroed once written to the private directory). */
  bytes: Uint8Array;
  scale: number;
  /** `sha256:<hex>` of the sealed bytes `bytes` was unsealed from. */
  digest: string;
}

/** The whole sealed file, read once through its pinned descriptor. */
async function readPinned(p: Pinned): Promise<Uint8Array> {
  const out = new Uint8Array(p.size);
  let at = 0;
  while (at < p.size) {
    const { bytesRead } = await p.fh.read(out, at, p.size - at, at);
    if (bytesRead === 0) break;
    at += bytesRead;
  }
  if (at !== p.size)
    throw new ModelLoadError('changed', `${p.file} changed while it was being loaded; not served`);
  return out;
}

/** The base model's GGUF header, read from its sealed file (a few chunks decrypted, nothing written). */
async function baseHeader(
  reader: Awaited<ReturnType<UnwrappedSealedPath['reader']>>,
  file: string,
): Promise<GgufInfo> {
  const size = reader.plaintextLength;
  for (let want = 1 << 20; ; want *= 2) {
    const n = Math.min(want, size);
    try {
      return readGgufInfo(await reader.read(0, n), size);
    } catch (e) {
      if (!(e instanceof GgufError)) throw e;
      if (e.reason !== 'need-more' || n >= MAX_HEADER_BYTES)
        throw new ModelLoadError('bad-model', `${file}: ${e.message}`);
    }
  }
}

const MAX_HEADER_BYTES = 512 << 20;

/** Unseals an adapter into memory and checks it whole against the base; refuses with `bad-adapter`. */
async function checkedAdapter(
  a: Pinned,
  scale: number,
  base: GgufInfo,
  o: SealedModelOptions,
): Promise<CheckedAdapter> {
  if (!isLoraScale(scale))
    throw new ModelLoadError(
      'bad-adapter',
      `${a.file}: the adapter's scale must be ${LORA_SCALE_RANGE}, got ${scale}`,
    );
  // One read of the sealed bytes: the digest attested and the plaintext checked and served both come
  // from this buffer, so the host cannot show the hash one file and the unsealing another.
  const sealedBytes = await readPinned(a);
  const digest = `sha256:${createHash('sha256').update(sealedBytes).digest('hex')}`;
  let bytes: Uint8Array;
  try {
    const sealed = await openSealed(sealedBytes);
    const reader = await (
      await sealed.unwrap(await o.key(sealed.header, a.file), bestChunkCipher())
    ).reader();
    bytes = await reader.read(0, reader.plaintextLength);
  } catch (e) {
    if (e instanceof SealFormatError || e instanceof ChunkAuthError) e.message = `${a.file}: ${e.message}`;
    throw e;
  }
  try {
    const adapter = readLoraAdapter(bytes);
    try {
      checkLoraAgainstBase(adapter, base);
    } finally {
      for (const p of adapter.pairs) {
        p.a.fill(0);
        p.b.fill(0);
      }
    }
  } catch (e) {
    bytes.fill(0);
    if (e instanceof LoraAdapterError)
      throw new ModelLoadError('bad-adapter', `${a.file}: ${e.message}; not served`, { cause: e });
    throw e;
  }
  o.log(`adapter ${a.file}: a LoRA adapter for this base (${base.architecture}), scale ${scale}`);
  return { bytes, scale, digest };
}
