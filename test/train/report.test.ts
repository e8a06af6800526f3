import { describe, expect, it } from 'vitest';
import {
  decimate,
  MAX_SERIES_POINTS,
  type MetricPoint,
  niceTicks,
  parseMetricsJsonl,
  renderLossSvg,
  renderReport,
} from '../../src/train/report.js';
import { sampleFacts } from './receipt-fixture.js';

/**
 * A strict well-formedness check (XML 1.0, no DTD beyond a bare DOCTYPE): balanced tags, quoted
 * attributes without `<`, only the predefined and numeric entities, no raw `<` or bare `&` in text.
 * Returns the element names in document order.
 */
function wellFormed(xml: string): string[] {
  const names: string[] = [];
  const stack: string[] = [];
  const entity = /&(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);/y;
  const checkText = (t: string, where: number) => {
    for (let i = 0; i < t.length; i++) {
      if (t[i] === '<') throw new Error(`raw < at ${where + i}`);
      if (t[i] === '&') {
        entity.lastIndex = i;
        if (!entity.test(t)) throw new Error(`bare & at ${where + i}: ${t.slice(i, i + 12)}`);
      }
    }
  };
  let i = 0;
  const doctype = /^<!DOCTYPE html>\s*/.exec(xml);
  if (doctype) i = doctype[0].length;
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[A-Za-z_:][\w:.-]*="[^"<]*")*)\s*(\/?)>/y;
  while (i < xml.length) {
    const lt = xml.indexOf('<', i);
    const end = lt === -1 ? xml.length : lt;
    const text = xml.slice(i, end);
    if (stack.length === 0 && text.trim() !== '') throw new Error(`text outside the root at ${i}`);
    checkText(text, i);
    if (lt === -1) break;
    tag.lastIndex = lt;
    const m = tag.exec(xml);
    if (!m) throw new Error(`malformed tag at ${lt}: ${xml.slice(lt, lt + 40)}`);
    const [, close, name, attrs, self] = m;
    for (const v of attrs!.matchAll(/="([^"]*)"/g)) checkText(v[1]!, lt);
    const attrNames = [...attrs!.matchAll(/([A-Za-z_:][\w:.-]*)=/g)].map((a) => a[1]);
    if (new Set(attrNames).size !== attrNames.length) throw new Error(`duplicate attribute in <${name}>`);
    if (close) {
      if (stack.pop() !== name) throw new Error(`</${name}> does not close the open element at ${lt}`);
    } else {
      names.push(name!);
      if (!self) stack.push(name!);
    }
    i = tag.lastIndex;
  }
  if (stack.length > 0) throw new Error(`unclosed: ${stack.join(' ')}`);
  return names;
}

const curve = (n: number, heldEvery = 10): MetricPoint[] =>
  Array.from({ length: n }, (_, k) => ({
    step: k + 1,
    loss: 4 * Math.exp(-k / 30) + 0.5,
    ...((k + 1) % heldEvery === 0 ? { heldout_loss: 4 * Math.exp(-k / 30) + 0.7 } : {}),
  }));

describe('training report', () => {
  it('is well-formed, self-contained, with one polyline point per step and one circle per held-out value', () => {
    const html = renderReport({ ...sampleFacts() }, curve(100));
    const names = wellFormed(html);
    expect(names).toContain('svg');
    expect(names).toContain('table');
    const svg = /<svg[\s\S]*<\/svg>/.exec(html)![0];
    wellFormed(svg);
    const points = /<polyline class="train"[^>]* points="([^"]*)"/.exec(svg)![1]!.split(' ');
    expect(points).toHaveLength(100);
    for (const p of points) expect(p).toMatch(/^\d+\.\d,\d+\.\d$/);
    // 10 held-out points plus the legend's marker.
    expect(svg.match(/<circle /g)).toHaveLength(11);
    expect(svg).toMatch(/>step<\/text>/);
    expect(svg).toMatch(/>loss<\/text>/);
    expect(svg.match(/<text [^>]*text-anchor="end"/g)!.length).toBeGreaterThanOrEqual(3); // y tick labels
    // Nothing external: no scripts, no links, no fetched URLs.
    expect(html).not.toMatch(/<script|<link|\ssrc=|url\(|href=/i);
    for (const fact of [
      'tiny-lm',
      '5e'.repeat(32),
      'kbs:///owner/model/key',
      'model.gguf.sealed',
      'INSECURE',
    ])
      expect(html).toContain(fact);
  });

  it('escapes every string from the receipt: a job name with markup stays text', () => {
    const evil = '<script>alert("x")</script> & \'q\'';
    const facts = sampleFacts({ manifest: { sha256: '5e'.repeat(32), name: evil } });
    facts.outputs[0]!.recipients = ['kbs:///a/<b>/c'];
    const html = renderReport(facts, curve(5), {
      status: 'warning" onload="x',
      insecure: true,
      summary: '<b>ok</b>',
    });
    wellFormed(html);
    expect(html).not.toContain('<script>');
    expect(html).not.toContain('<b>');
    expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;');
    expect(html).toContain('kbs:///a/&lt;b&gt;/c');
    expect(html).toContain('class="verdict warning&quot; onload=&quot;x"');
  });

  it('draws held-out points alone, says when there is nothing to draw, and copes with one point', () => {
    const heldOnly = renderLossSvg([
      { step: 10, heldout_loss: 2 },
      { step: 20, heldout_loss: 1.5 },
    ]);
    wellFormed(heldOnly);
    expect(heldOnly).not.toContain('<polyline');
    expect(heldOnly.match(/<circle /g)).toHaveLength(3);
    const none = renderLossSvg([]);
    wellFormed(none);
    expect(none).toContain('no metrics recorded');
    const one = renderLossSvg([{ step: 1, loss: 3 }]);
    wellFormed(one);
    expect(one).not.toContain('NaN');
  });

  it('keeps long series to MAX_SERIES_POINTS, first and last included', () => {
    const long = curve(10_001, 1000);
    const svg = renderLossSvg(long);
    const n = /points="([^"]*)"/.exec(svg)![1]!.split(' ').length;
    expect(n).toBeLessThanOrEqual(MAX_SERIES_POINTS + 1);
    expect(n).toBeGreaterThan(MAX_SERIES_POINTS / 2);
    const d = decimate(long);
    expect(d[0]).toBe(long[0]);
    expect(d[d.length - 1]).toBe(long[long.length - 1]);
  });

  it('ticks are round numbers inside the range', () => {
    expect(niceTicks(0, 100, 5)).toEqual([0, 20, 40, 60, 80, 100]);
    expect(niceTicks(0.43, 4.1, 5)).toEqual([1, 2, 3, 4]);
    expect(niceTicks(0.43, 1.2, 5)).toEqual([0.6, 0.8, 1, 1.2]);
    expect(niceTicks(3, 3)).toEqual([3]);
  });

  it('reads metrics.jsonl, skipping lines without a numeric step', () => {
    const text = [
      '{"step":1,"loss":3.5}',
      'not json',
      '{"loss":1}',
      '{"step":2,"loss":3.1,"heldout_loss":3.3,"accuracy":0.5}',
      '',
      '{"step":3,"loss":null}',
    ].join('\n');
    expect(parseMetricsJsonl(text)).toEqual([
      { step: 1, loss: 3.5 },
      { step: 2, loss: 3.1, heldout_loss: 3.3 },
      { step: 3 },
    ]);
  });
});
