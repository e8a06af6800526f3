/**
 * Reading an OpenAI chat stream (server-sent events) as it arrives, for the browser page. Kept apart
 * from the DOM code so that it is tested in Node. Web-standard.
 */

/** One step of a streamed chat completion. */
export type ChatEvent =
  | { type: 'delta'; text: string }
  | { type: 'finish'; reason: string }
  | { type: 'error'; message: string }
  | { type: 'done' };

export class StreamFormatError extends Error {
  override name = 'StreamFormatError';
}

/**
 * Splits server-sent events out of text pieces cut anywhere (even inside a line or a CRLF) and gives
 * each event's data (its `data:` lines joined by newlines). Comments and other fields are dropped.
 */
export class SseReader {
  private buffer = '';
  private data: string[] = [];

  push(text: string): string[] {
    this.buffer += text;
    const out: string[] = [];
    for (;;) {
      const nl = this.buffer.search(/\r\n|\r|\n/);
      // A lone CR at the end may be the first half of a CRLF: wait for the next piece.
      if (nl < 0 || (nl === this.buffer.length - 1 && this.buffer[nl] === '\r')) break;
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + (this.buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (this.data.length > 0) out.push(this.data.join('\n'));
        this.data = [];
      } else if (line === 'data' || line.startsWith('data:')) {
        const v = line.slice(5);
        this.data.push(v.startsWith(' ') ? v.slice(1) : v);
      }
    }
    return out;
  }

  /** At the end of the stream: an event cut off before its blank line still counts. */
  end(): string[] {
    const tail = this.push('\n\n');
    this.buffer = '';
    return tail;
  }
}

/** What one `data:` payload of a chat completion stream means. */
export function chatEvent(data: string): ChatEvent[] {
  if (data === '[DONE]') return [{ type: 'done' }];
  let v: unknown;
  try {
    v = JSON.parse(data);
  } catch {
    throw new StreamFormatError(`the server sent an event that is not JSON: ${data.slice(0, 80)}`);
  }
  if (typeof v !== 'object' || v === null) throw new StreamFormatError('the server sent a non-object event');
  const o = v as { error?: { message?: unknown }; choices?: unknown };
  if (o.error !== undefined) {
    const message = typeof o.error?.message === 'string' ? o.error.message : 'the server reported an error';
    return [{ type: 'error', message }];
  }
  if (!Array.isArray(o.choices)) throw new StreamFormatError('the server sent an event without choices');
  const out: ChatEvent[] = [];
  for (const c of o.choices as { delta?: { content?: unknown }; finish_reason?: unknown }[]) {
    if (typeof c?.delta?.content === 'string' && c.delta.content !== '')
      out.push({ type: 'delta', text: c.delta.content });
    if (typeof c?.finish_reason === 'string') out.push({ type: 'finish', reason: c.finish_reason });
  }
  return out;
}

/** Chat events from a streamed response body, as they arrive. */
export async function* readChatStream(body: ReadableStream<Uint8Array>): AsyncGenerator<ChatEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const sse = new SseReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      const payloads = done
        ? sse.push(decoder.decode()).concat(sse.end())
        : sse.push(decoder.decode(value, { stream: true }));
      for (const p of payloads) yield* chatEvent(p);
      if (done) return;
    }
  } finally {
    // Leaving early (the user stopped, or an error event) cancels the response, which stops generation.
    reader.cancel().catch(() => {});
  }
}
