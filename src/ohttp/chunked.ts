/**
 * Chunked Oblivious HTTP responses (draft-ietf-ohai-chunked-ohttp): the gateway streams a response as
 * AEAD-sealed chunks. Keys come from the RFC 9458 §4.4 schedule under the export label
 * "message/bhttp chunked response"; chunk i is sealed with nonce aead_nonce XOR i (i big-endian in Nn
 * bytes). A non-final chunk is `varint(len) || sealed` with empty AAD; the final chunk is `0x00 || sealed`
 * to the end of the stream with AAD "final". Reordering breaks the nonce, dropping the end leaves no
 * final chunk, and the "final" AAD stops an attacker from passing off a middle chunk as the last.
 */
import { concatBytes, utf8 } from '../util/bytes.js';
import { OhttpError } from './errors.js';
import {
  deriveResponseKeys,
  type ExchangeContext,
  openWith,
  type ResponseKeys,
  type ResponseOptions,
  responseNonceLength,
} from './ohttp.js';
import { encodeVarint, VarReader } from './varint.js';

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
 * Client side: feed received bytes to `push` as they arrive (any split), read plaintext chunks as they
 * authenticate; `end` opens the final chunk and refuses a stream that stopped before it. Pushes must not
 * overlap (await each one).
 */
export class ChunkedResponseOpener {
  private readonly queue = new ByteQueue();
  private keys: ResponseKeys | undefined;
  private counter = 0;
  private inFinal = false;
  private ended = false;

  /** `options.backend` defaults to the backend that set `ctx` up. */
  constructor(
    private readonly ctx: ExchangeContext,
    private readonly options: ResponseOptions = {},
  ) {}

  async push(bytes: Uint8Array): Promise<Uint8Array[]> {
    if (this.ended) throw new OhttpError('trailing-bytes', 'bytes after the end of the chunked response');
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
      if (!this.keys) {
        const n = responseNonceLength(this.ctx.aeadId);
        if (data.length < n) return out;
        this.keys = await deriveResponseKeys(
          this.ctx,
          data.subarray(0, n),
          CHUNKED_RESPONSE_LABEL,
          this.options,
        );
        at = n;
      }
      while (at < data.length) {
        const r = new VarReader(data.subarray(at), 'chunked response');
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
        if (r.remaining < len) return out;
        out.push(await this.open(r.take(len, 'chunk'), EMPTY));
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
    if (this.ended) throw new OhttpError('bad-message', 'the chunked response has already ended');
    this.ended = true;
    if (!this.keys || !this.inFinal) {
      throw new OhttpError(
        'chunk-truncated',
        'the chunked response ended before its final chunk (truncated)',
      );
    }
    if (this.queue.length < TAG) {
      throw new OhttpError('chunk-truncated', 'the final chunk is shorter than an AEAD tag (truncated)');
    }
    return this.open(this.queue.view(), FINAL_AAD);
  }

  private async open(sealed: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const nonce = chunkNonce(this.keys!.nonce, this.counter);
    const pt = await openWith(this.keys!.key, nonce, aad, sealed, `chunk ${this.counter}`);
    this.counter++;
    return pt;
  }
}
