import { describe, expect, it } from 'vitest';
import {
  formatDuration,
  formatLoss,
  formatProgress,
  formatRate,
  ThroughputTracker,
} from '../../src/train/progress.js';

describe('formatProgress', () => {
  it('writes the line of the brief', () => {
    expect(formatProgress({ step: 120, total: 500, loss: 1.2341, tokensPerSec: 3900.4, etaMs: 42_000 })).toBe(
      'step 120/500  loss 1.234  3,900 tok/s  ETA 0:42',
    );
  });

  it('estimates the ETA from the average pace when none is given, and leaves out what is unknown', () => {
    expect(formatProgress({ step: 100, total: 400, examplesPerSec: 2.46, elapsedMs: 20_000 })).toBe(
      'step 100/400  2.5 ex/s  ETA 1:00',
    );
    expect(formatProgress({ step: 0, total: 10, elapsedMs: 0 })).toBe('step 0/10');
    expect(formatProgress({ step: 3, total: 10, loss: Number.NaN })).toBe('step 3/10  loss NaN');
  });

  it('formats losses, rates and durations', () => {
    expect([0, 0.5, 12.3456, 0.0002, 2e7, -1.5].map(formatLoss)).toEqual([
      '0.000',
      '0.500',
      '12.346',
      '2.00e-4',
      '2.00e+7',
      '-1.500',
    ]);
    expect([0, 9.94, 10, 999.6, 1234567, -1, Number.POSITIVE_INFINITY].map(formatRate)).toEqual([
      '0.0',
      '9.9',
      '10',
      '1,000',
      '1,234,567',
      '?',
      '?',
    ]);
    expect([0, 59_499, 61_000, 3_600_000, 3_723_000, -1].map(formatDuration)).toEqual([
      '0:00',
      '0:59',
      '1:01',
      '1:00:00',
      '1:02:03',
      '?',
    ]);
  });
});

describe('ThroughputTracker', () => {
  it('knows nothing after one report, then smooths rate and time per step', () => {
    const t = new ThroughputTracker({ smoothing: 0.5 });
    t.record(0, 0, 1000);
    expect(t.unitsPerSec).toBeUndefined();
    expect(t.etaMs(100)).toBeUndefined();
    t.record(10, 1000, 2000); // 1,000 units/s, 100 ms/step
    expect(t.unitsPerSec).toBe(1000);
    expect(t.etaMs(100)).toBe(9000);
    t.record(20, 1000, 4000); // 500 units/s, 200 ms/step → averages 750 and 150
    expect(t.unitsPerSec).toBe(750);
    expect(t.etaMs(100)).toBe(80 * 150);
    expect(formatProgress({ step: 20, total: 100, tokensPerSec: t.unitsPerSec, etaMs: t.etaMs(100) })).toBe(
      'step 20/100  750 tok/s  ETA 0:12',
    );
  });

  it('ignores intervals where the clock or the step count does not move forward', () => {
    const t = new ThroughputTracker();
    t.record(5, 0, 1000);
    t.record(5, 100, 1000);
    t.record(3, 100, 2000); // a resume from an earlier checkpoint
    expect(t.unitsPerSec).toBeUndefined();
    t.record(4, 100, 3000);
    expect(t.unitsPerSec).toBe(100);
    expect(t.etaMs(4)).toBe(0);
    expect(() => new ThroughputTracker({ smoothing: 0 })).toThrow(RangeError);
  });
});
