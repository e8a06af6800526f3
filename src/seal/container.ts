/**
 * Sealing and opening: buffers, web streams and random access. Web-standard only (Web Crypto,
 * WHATWG streams), so it runs unchanged in a browser; Node adds file handles, pipes and worker threads
 * in node.ts by supplying a faster ChunkCipher.
 */
import { bs, concatBytes, sha256 } from '../util/index.js';
import { batchShape, ChunkAuthError, type ChunkCipher, TAG_BYTES, webCryptoCipher } from './aead.js';
import {
  chunkCount,
  encodeHeader,
  type Header,
  headerLengthOf,
  MAC_BYTES,
  parseHeader,
  plaintextLengthFromBody,
  type RecipientStanza,
  SealFormatError,
} from './format.js';
import {
  checkHeaderMac,
  deriveFileKeys,
  headerMac,
  type Recipient,
  type UnsealKey,
  unwrapDataKey,
  wrapDataKey,
} from './keys.js';

/** 1 MiB: see docs/format.md "Choice of chunk size" for the measurements behind it. */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/** Bytes handed to the cipher per call; amortises per-call cost and feeds worker threads. */
const BATCH_BYTES = 4 * 1024 * 1024;

export interface SealOptions {
  recipients: Recipient[];
  chunkSize?: number;
  contentType?: string;
  name?: string;
  /** Known plaintext length; leave unset when streaming from a source of unknown size (a pipe). */
  plaintextLength?: number;
  cipher?: ChunkCipher;
  /** Fixed randomness, for reproducible test vectors only. Never set it for real data. */
  deterministic?: { dataKey: Uint8Array; noncePrefix: Uint8Array; hpkeEphemeral?: Uint8Array[] };
}

/** Everything needed to process the body of one file. */
export interface BodyContext {
  header: Header;
  payloadKey: Uint8Array;
  /** SHA-256 of the whole header; the AAD of every chunk. */
  aad: Uint8Array;
  cipher: ChunkCipher;
}

export async function beginSeal(opts: SealOptions): Promise<BodyContext> {
  if (opts.recipients.length === 0) throw new SealFormatError('bad-key', 'seal needs at least one recipient');
  const dataKey = opts.deterministic?.dataKey ?? crypto.getRandomValues(new Uint8Array(32));
  const noncePrefix = opts.deterministic?.noncePrefix ?? crypto.getRandomValues(new Uint8Array(7));
  const recipients = [];
  for (const [i, r] of opts.recipients.entries()) {
    recipients.push(await wrapDataKey(dataKey, r, opts.deterministic?.hpkeEphemeral?.[i]));
  }
  const raw = encodeHeader({
    chunkSize: opts.chunkSize ?? DEFAULT_CHUNK_SIZE,
    plaintextLength: opts.plaintextLength,
    noncePrefix,
    contentType: opts.contentType ?? '',
    name: opts.name ?? '',
    recipients,
  });
  const keys = await deriveFileKeys(dataKey);
  raw.set(await headerMac(keys.headerKey, raw.subarray(0, raw.length - MAC_BYTES)), raw.length - MAC_BYTES);
  const header = parseHeader(raw);
  return {
    header,
    payloadKey: keys.payloadKey,
    aad: await sha256(raw),
    cipher: opts.cipher ?? webCryptoCipher,
  };
}

/** Parses a header, unwraps the data key with `key`, and checks the header MAC before anything else. */
export async function beginOpen(
  headerBytes: Uint8Array,
  key: UnsealKey,
  cipher?: ChunkCipher,
): Promise<BodyContext> {
  return unwrapHeader(parseHeader(headerBytes), key, cipher);
}

/** Unwraps the data key of a parsed header with `key` and checks the header MAC with it. */
async function unwrapHeader(header: Header, key: UnsealKey, cipher?: ChunkCipher): Promise<BodyContext> {
  const dataKey = await unwrapDataKey(header.recipients, key);
  const keys = await deriveFileKeys(dataKey);
  await checkHeaderMac(keys.headerKey, header.authenticated, header.mac);
  return {
    header,
    payloadKey: keys.payloadKey,
    aad: await sha256(header.raw),
    cipher: cipher ?? webCryptoCipher,
  };
}

function chunksPerBatch(chunkSize: number): number {
  return Math.max(1, Math.floor(BATCH_BYTES / chunkSize));
}

/** Turns a backend's ChunkAuthError into the format error users see; rethrows anything else. */
export function rethrowAuth(e: unknown): never {
  if (e instanceof ChunkAuthError) {
    throw new SealFormatError(
      'chunk-tampered',
      e.index < 0
        ? 'sealed body is malformed (a chunk is shorter than its tag)'
        : `chunk ${e.index} failed authentication: the file was modified, truncated, reordered or spliced`,
    );
  }
  throw e;
}

/** Runs cipher calls with up to `depth` batches in flight, releasing results in order. */
class OrderedPipeline {
  private readonly queue: Promise<Uint8Array>[] = [];
  constructor(private readonly depth: number) {}

  async push(work: () => Uint8Array | Promise<Uint8Array>, emit: (b: Uint8Array) => void): Promise<void> {
    const p = Promise.resolve().then(work);
    p.catch(() => {}); // observed when drained; avoids an unhandled rejection while queued
    this.queue.push(p);
    while (this.queue.length > this.depth) emit(await this.queue.shift()!);
  }

  async drain(emit: (b: Uint8Array) => void): Promise<void> {
    while (this.queue.length > 0) emit(await this.queue.shift()!);
  }
}

/** Depth of the in-flight queue: enough to keep a worker pool busy without unbounded memory. */
export interface StreamTuning {
  inFlight?: number;
}

/**
 * Plaintext → sealed bytes (header first). One chunk is held back until the next arrives or the stream
 * ends, because only then is it known whether it is the final chunk.
 */
export function sealStream(
  ctx: BodyContext,
  tuning: StreamTuning = {},
): TransformStream<Uint8Array, Uint8Array> {
  const { chunkSize, plaintextLength } = ctx.header;
  const per = chunksPerBatch(chunkSize);
  const pipe = new OrderedPipeline(tuning.inFlight ?? 2);
  const pending = new Batcher(per * chunkSize);
  let index = 0;
  let total = 0;
  const submit = (input: Uint8Array, final: boolean, emit: (b: Uint8Array) => void) => {
    const first = index;
    index += Math.max(1, Math.ceil(input.length / chunkSize));
    const batch = {
      key: ctx.payloadKey,
      noncePrefix: ctx.header.noncePrefix,
      aad: ctx.aad,
      first,
      chunkSize,
      final,
      input,
      disposable: true,
    };
    return pipe.push(() => ctx.cipher.seal(batch), emit);
  };
  return new TransformStream({
    start(c) {
      c.enqueue(ctx.header.raw);
    },
    async transform(data, c) {
      total += data.length;
      if (plaintextLength !== undefined && total > plaintextLength) {
        throw new SealFormatError('range', `input is longer than the declared ${plaintextLength} bytes`);
      }
      const emit = (b: Uint8Array) => c.enqueue(b);
      for (const full of pending.add(data, true)) await submit(full, false, emit);
    },
    async flush(c) {
      if (plaintextLength !== undefined && total !== plaintextLength) {
        throw new SealFormatError(
          'range',
          `input ended after ${total} of the declared ${plaintextLength} bytes`,
        );
      }
      const emit = (b: Uint8Array) => c.enqueue(b);
      await submit(pending.rest(), true, emit);
      await pipe.drain(emit);
    },
  });
}

/**
 * Sealed bytes → plaintext, releasing each batch as soon as it is authenticated. A consumer that
 * writes to a pipe therefore sees verified plaintext progressively; a later failure (truncation,
 * tampering) errors the stream, and the CLI exits non-zero. Writers to files must not rename the
 * output into place until the stream has closed without error.
 */
export function openStream(
  key: UnsealKey,
  cipher?: ChunkCipher,
  tuning: StreamTuning = {},
): TransformStream<Uint8Array, Uint8Array> {
  let body: BodyOpener | undefined;
  let head: Uint8Array = new Uint8Array(0);
  return new TransformStream({
    async transform(data, c) {
      const emit = (b: Uint8Array) => c.enqueue(b);
      if (!body) {
        head = concatBytes(head, data);
        if (head.length < 16) return;
        const hl = headerLengthOf(head);
        if (head.length < hl) return;
        body = new BodyOpener(await beginOpen(head.subarray(0, hl), key, cipher), tuning);
        data = head.subarray(hl);
      }
      await body.add(data, emit);
    },
    async flush(c) {
      if (!body) {
        if (head.length >= 16) headerLengthOf(head);
        throw new SealFormatError(
          head.length === 0 ? 'not-sealed' : 'truncated',
          head.length === 0
            ? 'input is empty, not a sealed file'
            : 'sealed file is truncated inside its header',
        );
      }
      await body.end((b) => c.enqueue(b));
    },
  });
}

/**
 * The body of a sealed file (the bytes after its header) → plaintext, for a header already parsed and
 * unwrapped (`SealedFile.unwrap`); otherwise as `openStream`.
 */
export function openBodyStream(
  ctx: BodyContext,
  tuning: StreamTuning = {},
): TransformStream<Uint8Array, Uint8Array> {
  const body = new BodyOpener(ctx, tuning);
  return new TransformStream({
    transform: (data, c) => body.add(data, (b) => c.enqueue(b)),
    flush: (c) => body.end((b) => c.enqueue(b)),
  });
}

/** Decrypts a body fed in pieces of any size, checking its length against the header as it goes. */
class BodyOpener {
  private readonly batcher: Batcher;
  private readonly pipe: OrderedPipeline;
  private readonly stride: number;
  private index = 0;
  private length = 0;

  constructor(
    private readonly ctx: BodyContext,
    tuning: StreamTuning,
  ) {
    this.stride = ctx.header.chunkSize + TAG_BYTES;
    this.batcher = new Batcher(chunksPerBatch(ctx.header.chunkSize) * this.stride);
    this.pipe = new OrderedPipeline(tuning.inFlight ?? 2);
  }

  async add(data: Uint8Array, emit: (b: Uint8Array) => void): Promise<void> {
    this.length += data.length;
    const { plaintextLength, chunkSize } = this.ctx.header;
    if (
      plaintextLength !== undefined &&
      this.length > plaintextLength + chunkCount(plaintextLength, chunkSize) * TAG_BYTES
    ) {
      throw new SealFormatError(
        'trailing-data',
        'sealed file has data after its final chunk (extended or concatenated)',
      );
    }
    for (const full of this.batcher.add(data, true)) await this.submit(full, false, emit);
  }

  async end(emit: (b: Uint8Array) => void): Promise<void> {
    const { plaintextLength, chunkSize } = this.ctx.header;
    const implied = plaintextLengthFromBody(this.length, chunkSize);
    if (plaintextLength !== undefined && implied !== plaintextLength) {
      throw new SealFormatError(
        'truncated',
        `sealed body holds ${implied} of the ${plaintextLength} plaintext bytes the header declares (truncated)`,
      );
    }
    await this.submit(this.batcher.rest(), true, emit);
    await this.pipe.drain(emit);
  }

  private submit(input: Uint8Array, final: boolean, emit: (b: Uint8Array) => void): Promise<void> {
    const c = this.ctx;
    const first = this.index;
    this.index += Math.max(1, Math.ceil(input.length / this.stride));
    const batch = {
      key: c.payloadKey,
      noncePrefix: c.header.noncePrefix,
      aad: c.aad,
      first,
      chunkSize: c.header.chunkSize,
      final,
      input,
      disposable: true,
    };
    return this.pipe.push(async () => {
      try {
        return await c.cipher.open(batch);
      } catch (e) {
        rethrowAuth(e);
      }
    }, emit);
  }
}

/**
 * Gathers incoming pieces into batches of exactly `size` bytes. With `holdBack`, a complete batch is
 * released only once a byte beyond it has arrived, so the final batch is never released early.
 */
class Batcher {
  private parts: Uint8Array[] = [];
  private len = 0;
  constructor(private readonly size: number) {}

  *add(data: Uint8Array, holdBack: boolean): Generator<Uint8Array> {
    if (data.length === 0) return;
    this.parts.push(data);
    this.len += data.length;
    while (holdBack ? this.len > this.size : this.len >= this.size) {
      const all = this.parts.length === 1 ? this.parts[0]! : concatBytes(...this.parts);
      yield all.slice(0, this.size);
      const rest = all.subarray(this.size);
      this.parts = rest.length ? [rest] : [];
      this.len = rest.length;
    }
  }

  rest(): Uint8Array {
    const all = concatBytes(...this.parts);
    this.parts = [];
    this.len = 0;
    return all;
  }
}

async function collect(readable: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const reader = readable.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return concatBytes(...parts);
    parts.push(value);
  }
}

export async function sealBytes(plaintext: Uint8Array, opts: SealOptions): Promise<Uint8Array> {
  const ctx = await beginSeal({ ...opts, plaintextLength: opts.plaintextLength ?? plaintext.length });
  return collect(new Blob([bs(plaintext)]).stream().pipeThrough(sealStream(ctx)));
}

/**
 * Seals a plaintext held in memory as consecutive `parts` (a small header and a large state, say)
 * without joining them: yields the sealed file's header, then each sealed batch, in order, for the
 * caller to write (and hash) as it goes. The same bytes as sealStream for the same context. Made for
 * large buffers: sealBytes copies its input several times over (a Blob, the stream's pieces, the
 * batches, the joined result), which costs far more than the cipher itself; here each batch is sealed
 * from a view of its part, and only a batch that straddles two parts is copied (then zeroed).
 * `ctx.cipher` must not take its input's buffer (views of the caller's memory are passed, not
 * `disposable`): an in-thread cipher such as bestChunkCipher() is meant. `into`, when given, supplies
 * the destination of each sealed batch (exactly `length` bytes; shared memory, a reused buffer), and
 * may wait until one is free; the batch is yielded as that buffer.
 */
export async function* sealParts(
  ctx: BodyContext,
  parts: readonly Uint8Array[],
  into?: (length: number) => Uint8Array | Promise<Uint8Array>,
): AsyncGenerator<Uint8Array> {
  const { chunkSize, plaintextLength } = ctx.header;
  const total = parts.reduce((n, p) => n + p.length, 0);
  if (plaintextLength !== undefined && total !== plaintextLength)
    throw new SealFormatError('range', `input is ${total} bytes, not the declared ${plaintextLength} bytes`);
  const size = chunksPerBatch(chunkSize) * chunkSize;
  let part = 0;
  let offset = 0;
  /** The next `n` plaintext bytes: a view when one part holds them all, else a copy. */
  const take = (n: number): { input: Uint8Array; copied: boolean } => {
    while (part < parts.length && offset === parts[part]!.length) [part, offset] = [part + 1, 0];
    const here = parts[part];
    if (n === 0 || (here && here.length - offset >= n)) {
      const input = here ? here.subarray(offset, offset + n) : new Uint8Array(0);
      offset += n;
      return { input, copied: false };
    }
    const input = new Uint8Array(n);
    for (let filled = 0; filled < n; ) {
      const p = parts[part]!;
      const m = Math.min(n - filled, p.length - offset);
      input.set(p.subarray(offset, offset + m), filled);
      filled += m;
      offset += m;
      if (offset === p.length) [part, offset] = [part + 1, 0];
    }
    return { input, copied: true };
  };
  yield ctx.header.raw;
  let index = 0;
  // An empty plaintext is one empty final chunk, as sealStream makes it.
  for (let start = 0; ; start += size) {
    const n = Math.min(size, total - start);
    const final = start + n >= total;
    const output = into ? await into(batchShape(n, chunkSize, true).outLen) : undefined;
    const { input, copied } = take(n);
    let sealed: Uint8Array;
    try {
      sealed = await ctx.cipher.seal({
        key: ctx.payloadKey,
        noncePrefix: ctx.header.noncePrefix,
        aad: ctx.aad,
        first: index,
        chunkSize,
        final,
        input,
        ...(output ? { output } : {}),
      });
    } finally {
      if (copied) input.fill(0);
    }
    index += Math.max(1, Math.ceil(n / chunkSize));
    yield sealed;
    if (final) return;
  }
}

export async function openBytes(
  sealed: Uint8Array,
  key: UnsealKey,
  cipher?: ChunkCipher,
): Promise<Uint8Array> {
  return collect(new Blob([bs(sealed)]).stream().pipeThrough(openStream(key, cipher)));
}

// ── random access ─────────────────────────────────────────────────────────────────────────────────

/** Anything that can read byte ranges: a file handle, a Blob, an HTTP range client. */
export interface RangeSource {
  size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
}

export interface SealedReader {
  header: Header;
  plaintextLength: number;
  /** Plaintext bytes [start, end), decrypting only the chunks that hold them. */
  read(start: number, end: number): Promise<Uint8Array>;
  /**
   * The same bytes as a stream, a batch of chunks (about 4 MiB) per piece, read and decrypted as the
   * consumer pulls: memory stays bounded however large the range. A bad range throws here.
   */
  stream(start: number, end: number): ReadableStream<Uint8Array>;
}

export function bytesSource(b: Uint8Array): RangeSource {
  return { size: b.length, read: async (o, n) => b.subarray(o, o + n) };
}

export interface OpenedBody {
  ctx: BodyContext;
  plaintextLength: number;
  count: number;
  bodyOffset: number;
}

/**
 * A sealed file whose header has been read and parsed, once: what it says (name, recipients, sizes)
 * without a key, then `unwrap` for everything that needs one. Loading a model asks the broker for the
 * key named in the header, peeks at the plaintext and unseals it all; each step works from this one
 * parsed header and one unwrapped data key rather than reading and unwrapping the file again.
 */
export interface SealedFile {
  readonly header: Header;
  readonly recipients: readonly RecipientStanza[];
  /** The original name recorded when sealing (may be empty). */
  readonly name: string;
  /** Size of the sealed file in bytes. */
  readonly size: number;
  /**
   * Unwraps the data key with `key` and checks the header MAC, then that the size matches a whole
   * number of chunks and the declared length, so truncation and extension are refused before any
   * read. `cipher` decrypts the chunks (default: Web Crypto).
   */
  unwrap(key: UnsealKey, cipher?: ChunkCipher): Promise<UnwrappedSealedFile>;
}

/** A sealed file with its data key: its body as plaintext, streamed or by range. */
export interface UnwrappedSealedFile extends OpenedBody {
  readonly header: Header;
  /**
   * Random access. The final chunk is decrypted once here, so a file whose last chunk was cut or
   * replaced is refused now rather than at some later read.
   */
  reader(): Promise<SealedReader>;
  /** The sealed bytes after the header, read as the consumer pulls. */
  body(): ReadableStream<Uint8Array>;
  /** The whole plaintext: `body()` through `openBodyStream`. */
  stream(tuning?: StreamTuning & { cipher?: ChunkCipher }): ReadableStream<Uint8Array>;
}

/** Parses the header of sealed bytes, or of anything that reads ranges (see `SealedFile`). */
export async function openSealed(source: Uint8Array | RangeSource): Promise<SealedFile> {
  const src = source instanceof Uint8Array ? bytesSource(source) : source;
  if (src.size < 16) {
    throw new SealFormatError(src.size === 0 ? 'not-sealed' : 'truncated', 'not a sealed file (too short)');
  }
  const hl = headerLengthOf(await src.read(0, 16));
  if (src.size < hl) throw new SealFormatError('truncated', 'sealed file is truncated inside its header');
  const header = parseHeader(await src.read(0, hl));
  return {
    header,
    recipients: header.recipients,
    name: header.name,
    size: src.size,
    async unwrap(key, cipher) {
      const ctx = await unwrapHeader(header, key, cipher);
      const implied = plaintextLengthFromBody(src.size - hl, header.chunkSize);
      const declared = header.plaintextLength;
      if (declared !== undefined && implied !== declared) {
        const short = implied < declared;
        throw new SealFormatError(
          short ? 'truncated' : 'trailing-data',
          `sealed file holds ${implied} plaintext bytes but its header declares ${declared} (${short ? 'truncated' : 'extended'})`,
        );
      }
      const opened = {
        ctx,
        plaintextLength: implied,
        count: chunkCount(implied, header.chunkSize),
        bodyOffset: hl,
      };
      const body = () => rangeStream(src, hl, src.size);
      return {
        ...opened,
        header,
        reader: () => readerOver(src, opened),
        body,
        stream: (tuning = {}) =>
          body().pipeThrough(openBodyStream(tuning.cipher ? { ...ctx, cipher: tuning.cipher } : ctx, tuning)),
      };
    },
  };
}

/** Bytes [start, end) of a source, a batch (4 MiB) per piece as the consumer pulls. */
function rangeStream(src: RangeSource, start: number, end: number): ReadableStream<Uint8Array> {
  let at = start;
  return new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        if (at === end) return c.close();
        const n = Math.min(BATCH_BYTES, end - at);
        c.enqueue(await src.read(at, n));
        at += n;
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * Opens a sealed file for random access. The header MAC is checked and the final chunk is decrypted
 * once, so a truncated or extended file is refused here rather than at some later read.
 */
export async function openReader(
  src: RangeSource,
  key: UnsealKey,
  cipher?: ChunkCipher,
): Promise<SealedReader> {
  return (await (await openSealed(src)).unwrap(key, cipher)).reader();
}

async function readerOver(src: RangeSource, opened: OpenedBody): Promise<SealedReader> {
  const { ctx, plaintextLength, count, bodyOffset: hl } = opened;
  const { chunkSize } = ctx.header;
  const stride = chunkSize + TAG_BYTES;
  const decrypt = async (first: number, last: number): Promise<Uint8Array> => {
    const off = hl + first * stride;
    const end = Math.min(hl + (last + 1) * stride, src.size);
    const input = await src.read(off, end - off);
    try {
      return await ctx.cipher.open({
        key: ctx.payloadKey,
        noncePrefix: ctx.header.noncePrefix,
        aad: ctx.aad,
        first,
        chunkSize,
        final: last === count - 1,
        input,
      });
    } catch (e) {
      rethrowAuth(e);
    }
  };
  await decrypt(count - 1, count - 1);
  const checkRange = (start: number, end: number) => {
    if (
      !Number.isSafeInteger(start) ||
      !Number.isSafeInteger(end) ||
      start < 0 ||
      end < start ||
      end > plaintextLength
    ) {
      throw new SealFormatError(
        'range',
        `range ${start}-${end} is outside the plaintext (0-${plaintextLength})`,
      );
    }
  };
  const read = async (start: number, end: number): Promise<Uint8Array> => {
    checkRange(start, end);
    if (start === end) return new Uint8Array(0);
    const first = Math.floor(start / chunkSize);
    const last = Math.floor((end - 1) / chunkSize);
    const plain = await decrypt(first, last);
    return plain.subarray(start - first * chunkSize, end - first * chunkSize);
  };
  const per = chunksPerBatch(chunkSize);
  return {
    header: ctx.header,
    plaintextLength,
    read,
    stream(start, end) {
      checkRange(start, end);
      let at = start;
      return new ReadableStream<Uint8Array>(
        {
          async pull(c) {
            if (at === end) return c.close();
            // Up to the end of the batch of chunks that `at` starts in, so pieces stay chunk-aligned.
            const next = Math.min(end, (Math.floor(at / chunkSize) + per) * chunkSize);
            c.enqueue(await read(at, next));
            at = next;
          },
        },
        { highWaterMark: 0 },
      );
    },
  };
}
