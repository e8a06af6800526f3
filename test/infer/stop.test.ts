import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StopScanner } from '../../src/infer/engine/stop.js';

function run(chunks: string[], stops: string[]) {
  const out: string[] = [];
  const s = new StopScanner(stops, (t) => out.push(t));
  let stoppedAfter = -1;
  chunks.forEach((c, i) => {
    if (s.push(c) && stoppedAfter < 0) stoppedAfter = i;
  });
  if (!s.stopped) s.flush();
  return { streamed: out.join(''), pieces: out, text: s.text, stopped: s.stopped, stoppedAfter };
}

describe('StopScanner', () => {
  it('cuts before the first stop string, across chunk boundaries', () => {
    const r = run(['hel', 'lo wo', 'rld ST', 'OP more'], ['STOP']);
    expect(r).toMatchObject({
      text: 'hello world ',
      streamed: 'hello world ',
      stopped: true,
      stoppedAfter: 3,
    });
  });

  it('holds back only a tail that could start a stop string, and releases it at the end', () => {
    const r = run(['abc S', 'T', 'x'], ['STOP']);
    expect(r.pieces).toEqual(['abc ', 'STx']);
    expect(r).toMatchObject({ text: 'abc STx', stopped: false });
    const cut = run(['abc ST'], ['STOP']);
    expect(cut).toMatchObject({ text: 'abc ST', streamed: 'abc ST', stopped: false }); // ended by maxTokens
  });

  it('picks the earliest of several stop strings', () => {
    expect(run(['a BB c AA'], ['AA', 'BB']).text).toBe('a ');
    expect(run(['xyz'], ['yz', 'xyz!']).text).toBe('x');
  });

  it('stops where a stop string first ends, however the text was chunked', () => {
    // "\n" is complete before " \nb" could be: a generator stops there, never producing "b".
    expect(run([' \n', 'b'], [' \nb', '\n']).text).toBe(' ');
    expect(run([' \nb'], [' \nb', '\n']).text).toBe(' ');
    expect(run(['xab'], ['ab', 'xab']).text).toBe(''); // both end together: the longer one wins
  });

  it('without stop strings streams every chunk as is; an empty stop string is ignored', () => {
    expect(run(['a', 'b', ''], []).pieces).toEqual(['a', 'b']);
    expect(run(['a', 'b'], ['']).text).toBe('ab');
  });

  it('fast-check: for any chunking, streamed text = result = text before the first stop', () => {
    const alphabet = fc.constantFrom('a', 'b', 'c', ' ', '\n');
    const str = (min: number, max: number) =>
      fc.array(alphabet, { minLength: min, maxLength: max }).map((a) => a.join(''));
    fc.assert(
      fc.property(
        fc.array(str(0, 6), { maxLength: 12 }),
        fc.array(str(1, 4), { maxLength: 3 }),
        (chunks, stops) => {
          // Character by character: stop where a stop string first ends, cut at its start.
          const whole = chunks.join('');
          let expected = whole;
          let stopped = false;
          for (let end = 1; end <= whole.length && !stopped; end++) {
            const ending = stops.filter((s) => whole.slice(0, end).endsWith(s));
            if (ending.length) {
              expected = whole.slice(0, end - Math.max(...ending.map((s) => s.length)));
              stopped = true;
            }
          }
          const r = run(chunks, stops);
          expect(r.text).toBe(expected);
          expect(r.streamed).toBe(expected);
          expect(r.stopped).toBe(stopped);
        },
      ),
      { numRuns: 500 },
    );
  });
});
