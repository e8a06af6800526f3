import { describe, expect, it } from 'vitest';
import { MetricsError, MetricsLog, parseMetrics } from '../../src/train/metrics.js';

describe('MetricsLog', () => {
  it('writes one JSON object per line: step, loss, time, then the rest as given', () => {
    const lines: string[] = [];
    const log = new MetricsLog((l) => lines.push(l));
    const at = new Date('2025-01-02T03:04:05.678Z');
    log.record({ heldout_loss: 0.5, step: 10, loss: 1.25, accuracy: 0.9 }, at);
    log.record({ step: 20, loss: Number.NaN }, at);
    log.record({ step: 30, tokens: 4096, skipped: undefined }, at);
    expect(lines).toEqual([
      '{"step":10,"loss":1.25,"time":"2025-01-02T03:04:05.678Z","heldout_loss":0.5,"accuracy":0.9}\n',
      '{"step":20,"loss":null,"time":"2025-01-02T03:04:05.678Z"}\n',
      '{"step":30,"time":"2025-01-02T03:04:05.678Z","tokens":4096}\n',
    ]);
    expect(log.size).toBe(3);
    expect(log.toString()).toBe(lines.join(''));
    expect(new TextDecoder().decode(log.toBytes())).toBe(lines.join(''));
    expect(parseMetrics(log.toString())).toEqual([
      { step: 10, loss: 1.25, time: '2025-01-02T03:04:05.678Z', heldout_loss: 0.5, accuracy: 0.9 },
      { step: 20, loss: null, time: '2025-01-02T03:04:05.678Z' },
      { step: 30, time: '2025-01-02T03:04:05.678Z', tokens: 4096 },
    ]);
  });

  it('refuses a record without a whole step, and a non-number value', () => {
    const log = new MetricsLog();
    expect(() => log.record({ step: 1.5 })).toThrow(MetricsError);
    expect(() => log.record({ step: 1, loss: '1' as unknown as number })).toThrow(
      'metrics: loss must be a number',
    );
    expect(log.size).toBe(0);
  });

  it('names the line of a malformed log', () => {
    expect(() => parseMetrics('{"step":1,"time":"t"}\n{"step":2}\n')).toThrow('metrics line 2: needs "step"');
    expect(() => parseMetrics('nope\n')).toThrow('metrics line 1: not JSON');
    expect(() => parseMetrics('{"step":1,"time":"t","x":"y"}\n')).toThrow(
      'metrics line 1: x is not a number',
    );
  });
});
