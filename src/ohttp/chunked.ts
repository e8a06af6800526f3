/**
 * Chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp): requests and responses as AEAD-sealed chunks.
 * A non-final chunk is `varint(len) || sealed` with empty AAD; the final chunk is `0x00 || sealed` to the
 * end of the stream with AAD "final"; a non-final chunk never carries an empty plaintext.
 *
 * Requests: the RFC 9458 header and enc, then chunks sealed with the HPKE context made under the label
 * "message/bhttp chunked request", each with the context's next sequence number.
 * Responses: a response nonce, then chunks sealed under keys from the RFC 9458 §4.4 schedule with the
 * export label "message/bhttp chunked response"; chunk i uses nonce aead_nonce XOR i (i big-endian in Nn
 * bytes).
 *
 * Reordering breaks the nonce, dropping the end leaves no final chunk, and the "final" AAD stops an
 * attacker from passing off a middle chunk as the last.
 */
import { concatBytes, utf8 } from '../util/index.js';
import type { HpkeRecipient, HpkeSender } from './backend.js';
import { OhttpError } from './errors.js';
import type { KeyConfig } from './keyconfig.js';
import {
  type DecapsulateOptions,
  deriveResponseKeys,
  type EncapsulateOptions,
  type ExchangeContext,
  type GatewayKey,
  openWith,
  REQUEST_PREFIX_LENGTH,
  type ResponseKeys,
  type ResponseOptions,
  responseNonceLength,
  setupRequestRecipient,
  setupRequestSender,
} from './ohttp.js';
import { encodeVarint, VarReader } from './varint.js';

export const CHUNKED_REQUEST_LABEL = 'message/bhttp chunked request';
export const CHUNKED_RESPONSE_LABEL = 'message/bhttp chunked response';
const FINAL_AAD = utf8.encode('final');
const EMPTY = new Uint8Array(0);
const TAG = 16;
/** Far below the 2^96 nonce space; a stream this long is a bug, not a response. */
const MAX_CHUNKS = 2 ** 32;

function chunkNonce(base: Uint8Array, counter: number): Uint8Array {
  const out = base.slice();
  let c = counter;
  for (let i = out.length - 1; i >= 0 && c > 0; i--) {
    out[i]! ^= c & 0xff;
    c = Math.floor(c / 256);
  }
  return out;
}

/** Gateway side: `header` goes out first, then the output of each `seal`. */
export class ChunkedResponseSealer {
  private counter = 0;
  private done = false;
  private constructor(
    readonly header: Uint8Array,
    private readonly keys: ResponseKeys,
  ) {}

  /** `options.backend` defaults to the backend that set `ctx` up. */
  static async create(
    ctx: ExchangeContext,
    responseNonce?: Uint8Array,
    options: ResponseOptions = {},
  ): Promise<ChunkedResponseSealer> {
    const n = responseNonceLength(ctx.aeadId);
    const nonce = responseNonce ?? crypto.getRandomValues(new Uint8Array(n));
    if (nonce.length !== n) throw new OhttpError('bad-message', `the response nonce must be ${n} bytes`);
    return new ChunkedResponseSealer(
      nonce.slice(),
      await deriveResponseKeys(ctx, nonce, CHUNKED_RESPONSE_LABEL, options),
    );
  }

  async seal(chunk: Uint8Array, final = false): Promise<Uint8Array> {
    if (this.done) throw new OhttpError('bad-message', 'the final chunk has already been sealed');
    if (!final && chunk.length === 0)
      throw new OhttpError('bad-message', 'a non-final chunk cannot be empty');
    if (this.counter >= MAX_CHUNKS) throw new OhttpError('bad-message', 'too many chunks in one response');
    const nonce = chunkNonce(this.keys.nonce, this.counter++);
    const sealed = await this.keys.key.seal(nonce, final ? FINAL_AAD : EMPTY, chunk);
    if (final) {
      this.done = true;
      return concatBytes(encodeVarint(0), sealed);
    }
    return concatBytes(encodeVarint(sealed.length), sealed);
  }
}

/**
 * The bytes received but not yet consumed. Appending copies into a buffer that at least doubles when it
 * grows and compacts only when at most half of it is live, so a chunk arriving in many small pieces
 * costs time linear in its length.
 */
class ByteQueue {
  private buf = EMPTY;
  private start = 0;
  private end = 0;

  get length(): number {
    return this.end - this.start;
  }

  view(): Uint8Array {
    return this.buf.subarray(this.start, this.end);
  }

  append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const live = this.length;
    if (this.end + bytes.length > this.buf.length) {
      if (live + bytes.length <= this.buf.length && live <= this.buf.length / 2) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const grown = new Uint8Array(Math.max(live + bytes.length, 2 * this.buf.length, 256));
        grown.set(this.view());
        this.buf = grown;
      }
      this.start = 0;
      this.end = live;
    }
    this.buf.set(bytes, this.end);
    this.end += bytes.length;
  }

  consume(n: number): void {
    this.start += n;
    if (this.start === this.end) this.start = this.end = 0;
  }
}

/**
 * Reads a chunked stream: a fixed-length prefix (a response nonce, or a request's header and enc), then
 * chunks. Feed received bytes to `push` as they arrive (any split) and read plaintext chunks as they
 * authenticate; `end` opens the final chunk and refuses a stream that stopped before it. Pushes must not
 * overlap (await each one).
 */
abstract class ChunkedOpener {
  private readonly queue = new ByteQueue();
  private started = false;
  private inFinal = false;
  private ended = false;

  protected abstract readonly prefixLength: number;
  protected abstract readonly what: string;
  /** Takes the prefix (key setup); throws to refuse the stream. */
  protected abstract start(prefix: Uint8Array): Promise<void>;
  protected abstract open(sealed: Uint8Array, final: boolean): Promise<Uint8Array>;

  async push(bytes: Uint8Array): Promise<Uint8Array[]> {
    if (this.ended) throw new OhttpError('trailing-bytes', `bytes after the end of the ${this.what}`);
    const out: Uint8Array[] = [];
    if (this.inFinal) {
      this.queue.append(bytes);
      return out;
    }
    // With nothing left over, parse the caller's bytes in place and keep only their unconsumed tail.
    const queued = this.queue.length > 0;
    if (queued) this.queue.append(bytes);
    const data = queued ? this.queue.view() : bytes;
    let at = 0;
    try {
      if (!this.started) {
        if (data.length < this.prefixLength) return out;
        await this.start(data.subarray(0, this.prefixLength));
        this.started = true;
        at = this.prefixLength;
      }
      while (at < data.length) {
        const r = new VarReader(data.subarray(at), this.what);
        let len: number;
        try {
          len = r.varint('chunk length');
        } catch (e) {
          if (e instanceof OhttpError && e.code === 'truncated') return out;
          throw e;
        }
        if (len === 0) {
          this.inFinal = true;
          at += r.offset;
          return out;
        }
        if (len < TAG) throw new OhttpError('bad-message', `chunk length ${len} is shorter than an AEAD tag`);
        // The draft: an empty non-final chunk is treated as a decryption error.
        if (len === TAG) throw new OhttpError('decrypt-failed', 'a non-final chunk carries no data');
        if (r.remaining < len) return out;
        out.push(await this.open(r.take(len, 'chunk'), false));
        at += r.offset;
      }
      return out;
    } finally {
      if (queued) this.queue.consume(at);
      else this.queue.append(data.subarray(at));
    }
  }

  /** Call when the stream ends; returns the final chunk's plaintext. */
  async end(): Promise<Uint8Array> {
    if (this.ended) throw new OhttpError('bad-message', `the ${this.what} has already ended`);
    this.ended = true;
    if (!this.started || !this.inFinal) {
      throw new OhttpError('chunk-truncated', `the ${this.what} ended before its final chunk (truncated)`);
    }
    if (this.queue.length < TAG) {
      throw new OhttpError('chunk-truncated', 'the final chunk is shorter than an AEAD tag (truncated)');
    }
    return this.open(this.queue.view(), true);
  }
}

/** Client side of a chunked response (see ChunkedOpener). */
export class ChunkedResponseOpener extends ChunkedOpener {
  protected readonly prefixLength: number;
  protected readonly what = 'chunked response';
  private keys: ResponseKeys | undefined;
  private counter = 0;

  /** `options.backend` defaults to the backend that set `ctx` up. */
  constructor(
    private readonly ctx: ExchangeContext,
    private readonly options: ResponseOptions = {},
  ) {
    super();
    this.prefixLength = responseNonceLength(ctx.aeadId);
  }

  protected async start(nonce: Uint8Array): Promise<void> {
    this.keys = await deriveResponseKeys(this.ctx, nonce, CHUNKED_RESPONSE_LABEL, this.options);
  }

  protected async open(sealed: Uint8Array, final: boolean): Promise<Uint8Array> {
    const nonce = chunkNonce(this.keys!.nonce, this.counter);
    const pt = await openWith(
      this.keys!.key,
      nonce,
      final ? FINAL_AAD : EMPTY,
      sealed,
      `chunk ${this.counter}`,
    );
    this.counter++;
    return pt;
  }
}

/**
 * Gateway side of a chunked request (`message/ohttp-chunked-req`): the header and enc pick the key and
 * set up the HPKE context (refusals as for decapsulateRequest), then each chunk is opened in sequence as
 * it arrives. `context` (for the response) is there once the prefix has been read.
 */
export class ChunkedRequestOpener extends ChunkedOpener {
  protected readonly prefixLength = REQUEST_PREFIX_LENGTH;
  protected readonly what = 'chunked request';
  private recipient: HpkeRecipient | undefined;
  private counter = 0;
  context: ExchangeContext | undefined;

  constructor(
    private readonly keys: readonly GatewayKey[],
    private readonly options: Omit<DecapsulateOptions, 'label'> = {},
  ) {
    super();
  }

  protected async start(prefix: Uint8Array): Promise<void> {
    const r = new VarReader(prefix, 'chunked request');
    ({ recipient: this.recipient, context: this.context } = await setupRequestRecipient(r, this.keys, {
      ...this.options,
      label: CHUNKED_REQUEST_LABEL,
    }));
  }

  protected async open(sealed: Uint8Array, final: boolean): Promise<Uint8Array> {
    if (this.counter >= MAX_CHUNKS) throw new OhttpError('bad-message', 'too many chunks in one request');
    try {
      const pt = await this.recipient!.open(final ? FINAL_AAD : EMPTY, sealed);
      this.counter++;
      return pt;
    } catch {
      throw new OhttpError(
        'decrypt-failed',
        `request chunk ${this.counter} does not decrypt (tampered, reordered, truncated or wrong key)`,
      );
    }
  }
}

/**
 * Client side of a chunked request: `header` (hdr || enc) goes out first, then the output of each `seal`
 * (the last one final). `context` opens the chunked response.
 */
export class ChunkedRequestSealer {
  private done = false;
  private counter = 0;
  private constructor(
    readonly header: Uint8Array,
    private readonly sender: HpkeSender,
    readonly context: ExchangeContext,
  ) {}

  static async create(config: KeyConfig, options: Omit<EncapsulateOptions, 'label'> = {}) {
    const s = await setupRequestSender(config, { ...options, label: CHUNKED_REQUEST_LABEL });
    return new ChunkedRequestSealer(s.header, s.sender, s.context);
  }

  async seal(chunk: Uint8Array, final = false): Promise<Uint8Array> {
    if (this.done) throw new OhttpError('bad-message', 'the final chunk has already been sealed');
    if (!final && chunk.length === 0)
      throw new OhttpError('bad-message', 'a non-final chunk cannot be empty');
    if (this.counter >= MAX_CHUNKS) throw new OhttpError('bad-message', 'too many chunks in one request');
    const sealed = await this.sender.seal(final ? FINAL_AAD : EMPTY, chunk);
    this.counter++;
    if (final) {
      this.done = true;
      return concatBytes(encodeVarint(0), sealed);
    }
    return concatBytes(encodeVarint(sealed.length), sealed);
  }
}
