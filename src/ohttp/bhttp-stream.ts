/**
 * Streamed Binary HTTP responses (RFC 9292 indeterminate-length form, framing indicator 3), for the
 * chunked Oblivious HTTP responses of streamed generations: the gateway writes the head as soon as the
 * status is known, each piece of content as it is produced and the trailers (where the per-response
 * receipt goes) at the end; the client decodes the same bytes incrementally, in whatever pieces the
 * chunked OHTTP layer hands it.
 */
import { concatBytes, utf8 } from '../util/index.js';
import type { Field } from './bhttp.js';
import { OhttpError } from './errors.js';
import { encodeVarint, VarReader } from './varint.js';

const INDETERMINATE_RESPONSE = 3;
const END = encodeVarint(0);

function fieldLines(fields: Field[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [n, v] of fields) {
    const name = utf8.encode(n);
    if (name.length === 0) throw new OhttpError('bad-message', 'a field name cannot be empty');
    const value = utf8.encode(v);
    parts.push(encodeVarint(name.length), name, encodeVarint(value.length), value);
  }
  parts.push(END);
  return concatBytes(...parts);
}

/** Writer: `head`, then any number of `content`, then `end` (with the trailers). */
export const streamedResponse = {
  head(status: number, headers: Field[]): Uint8Array {
    if (!Number.isInteger(status) || status < 200 || status > 599) {
      throw new OhttpError('bad-status', `${status} is not a valid final status code`);
    }
    return concatBytes(encodeVarint(INDETERMINATE_RESPONSE), encodeVarint(status), fieldLines(headers));
  },
  /** An empty piece would read as the end of the content, so it encodes to nothing. */
  content(piece: Uint8Array): Uint8Array {
    if (piece.length === 0) return new Uint8Array(0);
    return concatBytes(encodeVarint(piece.length), piece);
  },
  end(trailers: Field[] = []): Uint8Array {
    return concatBytes(END, fieldLines(trailers));
  },
};

export type StreamedResponseEvent =
  | { type: 'head'; status: number; headers: Field[] }
  | { type: 'content'; bytes: Uint8Array }
  | { type: 'trailers'; trailers: Field[] };

type State = 'framing' | 'status' | 'headers' | 'content' | 'trailers' | 'done';
const strict = new TextDecoder('utf-8', { fatal: true });

function text(bytes: Uint8Array, what: string): string {
  try {
    return strict.decode(bytes);
  } catch {
    throw new OhttpError('bad-message', `binary HTTP ${what} is not valid UTF-8`);
  }
}

/**
 * Reader: `push` bytes as they arrive and get the events they complete; `end` when the stream is over.
 * Informational (1xx) responses are skipped; a known-length response is refused, since the point of
 * this reader is that nothing waits for the whole message.
 */
export class StreamedResponseDecoder {
  private buffer: Uint8Array = new Uint8Array(0);
  private state: State = 'framing';
  private status = 0;

  /** A getter, so TypeScript does not narrow the state across the calls that move it. */
  get done(): boolean {
    return this.state === 'done';
  }

  push(bytes: Uint8Array): StreamedResponseEvent[] {
    if (this.done) {
      if (bytes.some((b) => b !== 0))
        throw new OhttpError('trailing-bytes', 'bytes after the end of the binary HTTP response');
      return [];
    }
    this.buffer = this.buffer.length === 0 ? bytes : concatBytes(this.buffer, bytes);
    const events: StreamedResponseEvent[] = [];
    // Every step needs at least one byte: stop at an empty buffer rather than throw 'truncated' (an Error
    // and its stack trace per pushed piece, a large share of a streamed response's cost).
    while (this.buffer.length > 0) {
      const r = new VarReader(this.buffer, 'streamed binary HTTP response');
      let event: StreamedResponseEvent | undefined;
      try {
        event = this.step(r);
      } catch (e) {
        if (e instanceof OhttpError && e.code === 'truncated') return events;
        throw e;
      }
      this.buffer = this.buffer.subarray(r.offset);
      if (event) events.push(event);
      if (this.done) {
        if (this.buffer.some((b) => b !== 0))
          throw new OhttpError('trailing-bytes', 'bytes after the end of the binary HTTP response');
        return events;
      }
    }
    return events;
  }

  /** Refuses a stream that stopped inside the message; trailers may be cut off only as §3.8 allows. */
  end(): StreamedResponseEvent[] {
    if (this.state === 'done') return [];
    // RFC 9292 §3.8: an indeterminate-length message may end right after its content terminator.
    if (this.state === 'trailers' && this.buffer.length === 0) {
      this.state = 'done';
      return [{ type: 'trailers', trailers: [] }];
    }
    throw new OhttpError('truncated', `the streamed binary HTTP response stopped in its ${this.state}`);
  }

  /** Consumes one unit from `r`; throws 'truncated' (and consumes nothing) when more bytes are needed. */
  private step(r: VarReader): StreamedResponseEvent | undefined {
    switch (this.state) {
      case 'framing': {
        const f = r.varint('framing indicator');
        if (f !== INDETERMINATE_RESPONSE) {
          throw new OhttpError(
            'bad-framing',
            `framing indicator ${f} is not a streamed (indeterminate) response`,
          );
        }
        this.state = 'status';
        return undefined;
      }
      case 'status': {
        const status = r.varint('status');
        if (status >= 100 && status <= 199) {
          // Skip the informational response's fields whole, or wait for them.
          this.readFields(r, 'informational header section');
          return undefined;
        }
        if (status < 200 || status > 599)
          throw new OhttpError('bad-status', `${status} is not a valid status code`);
        this.status = status;
        this.state = 'headers';
        return undefined;
      }
      case 'headers': {
        const headers = this.readFields(r, 'header section');
        this.state = 'content';
        return { type: 'head', status: this.status, headers };
      }
      case 'content': {
        const len = r.varint('content chunk length');
        if (len === 0) {
          this.state = 'trailers';
          return undefined;
        }
        return { type: 'content', bytes: r.take(len, 'content chunk').slice() };
      }
      case 'trailers': {
        const trailers = this.readFields(r, 'trailer section');
        this.state = 'done';
        return { type: 'trailers', trailers };
      }
      case 'done':
        return undefined;
    }
  }

  private readFields(r: VarReader, what: string): Field[] {
    const out: Field[] = [];
    for (;;) {
      const nameLen = r.varint(`${what} name length`);
      if (nameLen === 0) return out;
      const name = text(r.take(nameLen, `${what} name`), `${what} name`);
      out.push([name, text(r.lengthPrefixed(`${what} value`), `${what} value`)]);
    }
  }
}
