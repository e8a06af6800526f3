import { afterEach, describe, expect, it, vi } from 'vitest';
import { spinner } from '../../src/cli/progress.js';

afterEach(() => {
  vi.useRealTimers();
});

function stream(isTTY: boolean) {
  const written: string[] = [];
  return { isTTY, written, write: (s: string) => written.push(s) };
}

describe('spinner (cloister chat, waiting for the first token)', () => {
  it('on a terminal: appears after 100 ms with its label, turns, and stop erases it once', () => {
    vi.useFakeTimers();
    const out = stream(true);
    const s = spinner('waiting for the first token…', out);
    vi.advanceTimersByTime(99);
    expect(out.written).toEqual([]);
    vi.advanceTimersByTime(201);
    expect(out.written).toEqual([
      '\r⠋ waiting for the first token…\x1b[K',
      '\r⠙ waiting for the first token…\x1b[K',
      '\r⠹ waiting for the first token…\x1b[K',
    ]);
    s.stop();
    s.stop();
    vi.advanceTimersByTime(1000);
    expect(out.written.slice(3)).toEqual(['\r\x1b[K']);
  });

  it('a quick answer (stopped before 100 ms) leaves nothing on the terminal', () => {
    vi.useFakeTimers();
    const out = stream(true);
    spinner('waiting', out).stop();
    vi.advanceTimersByTime(1000);
    expect(out.written).toEqual([]);
  });

  it('writes nothing where the output is not a terminal', () => {
    vi.useFakeTimers();
    const out = stream(false);
    const s = spinner('waiting', out);
    vi.advanceTimersByTime(1000);
    s.stop();
    expect(out.written).toEqual([]);
  });
});
