import { describe, expect, it } from 'vitest';
import { chatEvent, readChatStream, SseReader, StreamFormatError } from '../../src/ui/sse.js';

const chunk = (content: string) =>
  `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content } }] })}\n\n`;

function streamOf(pieces: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(c) {
      for (const p of pieces) c.enqueue(enc.encode(p));
      c.close();
    },
  });
}

async function collect(body: ReadableStream<Uint8Array>) {
  const out = [];
  for await (const e of readChatStream(body)) out.push(e);
  return out;
}

describe('SseReader', () => {
  it('gives the same events however the text is cut, with LF, CRLF or CR line ends', () => {
    const text = 'data: one\n\n: a comment\nevent: x\ndata: two\ndata:three\n\ndata\n\n';
    for (const eol of ['\n', '\r\n', '\r']) {
      const t = text.replaceAll('\n', eol);
      for (let cut = 0; cut <= t.length; cut++) {
        const r = new SseReader();
        const got = [...r.push(t.slice(0, cut)), ...r.push(t.slice(cut)), ...r.end()];
        expect(got, `eol ${JSON.stringify(eol)} cut ${cut}`).toEqual(['one', 'two\nthree', '']);
      }
    }
  });

  it('keeps an event cut off before its blank line at the end', () => {
    const r = new SseReader();
    expect(r.push('data: [DONE]')).toEqual([]);
    expect(r.end()).toEqual(['[DONE]']);
  });
});

describe('chatEvent', () => {
  it('reads deltas, finish reasons, [DONE] and error events', () => {
    expect(
      chatEvent(JSON.stringify({ choices: [{ delta: { content: ' hi' }, finish_reason: null }] })),
    ).toEqual([{ type: 'delta', text: ' hi' }]);
    expect(chatEvent(JSON.stringify({ choices: [{ delta: {}, finish_reason: 'length' }] }))).toEqual([
      { type: 'finish', reason: 'length' },
    ]);
    expect(chatEvent(JSON.stringify({ choices: [], usage: { total_tokens: 3 } }))).toEqual([]);
    expect(chatEvent('[DONE]')).toEqual([{ type: 'done' }]);
    expect(chatEvent(JSON.stringify({ error: { message: 'queue full' } }))).toEqual([
      { type: 'error', message: 'queue full' },
    ]);
    expect(chatEvent(JSON.stringify({ error: 'x' }))).toEqual([
      { type: 'error', message: 'the server reported an error' },
    ]);
  });

  it('refuses events that are not chat chunks', () => {
    expect(() => chatEvent('{"choices": [')).toThrow(StreamFormatError);
    expect(() => chatEvent('null')).toThrow(/non-object/);
    expect(() => chatEvent('{"object": "x"}')).toThrow(/without choices/);
  });
});

describe('readChatStream', () => {
  it('streams the deltas of a body cut inside events and inside a UTF-8 character', async () => {
    const whole = chunk(' grüß') + chunk(' dich') + 'data: [DONE]\n\n';
    const bytes = new TextEncoder().encode(whole);
    const at = whole.indexOf('ü') + 1; // inside the two bytes of ü
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes.slice(0, at));
        c.enqueue(bytes.slice(at, at + 7));
        c.enqueue(bytes.slice(at + 7));
        c.close();
      },
    });
    expect(await collect(body)).toEqual([
      { type: 'delta', text: ' grüß' },
      { type: 'delta', text: ' dich' },
      { type: 'done' },
    ]);
  });

  it('fails on a malformed event and cancels the body', async () => {
    let cancelled = false;
    const enc = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(enc.encode(chunk('a') + 'data: {oops\n\n'));
      },
      cancel() {
        cancelled = true;
      },
    });
    await expect(collect(body)).rejects.toThrow(StreamFormatError);
    expect(cancelled).toBe(true);
  });

  it('ends with the body even without [DONE]', async () => {
    expect(await collect(streamOf([chunk('x'), 'data: {"choices":[]}']))).toEqual([
      { type: 'delta', text: 'x' },
    ]);
  });
});
