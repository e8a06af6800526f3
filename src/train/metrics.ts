/**
 * The metrics log of a training job: one JSON object per line (JSON Lines), e.g.
 * `{"step":120,"loss":1.234,"time":"2025-01-01T00:00:00.000Z","heldout_loss":1.3}`. Keys come in a
 * fixed order (step, loss, time, then the rest as given) so that two runs' logs diff cleanly. A value
 * that JSON cannot hold (NaN, ±Infinity: a diverged loss) is written as null rather than dropped, so
 * the log still says the step happened.
 */

/** One record: the step, and scalars measured at it. */
export interface MetricRecord {
  step: number;
  loss?: number;
  [name: string]: number | undefined;
}

/** A parsed line: numbers, null where the value was not finite, and the ISO time. */
export interface MetricLine {
  step: number;
  time: string;
  [name: string]: number | string | null;
}

export class MetricsError extends Error {
  override name = 'MetricsError';
  constructor(
    readonly code: 'bad-metric',
    message: string,
  ) {
    super(message);
  }
}

export class MetricsLog {
  private readonly lines: string[] = [];

  /** @param sink receives each line (with its newline) as it is recorded, e.g. an append to a file. */
  constructor(private readonly sink?: (line: string) => void) {}

  /** Serialises one record and returns its line (with the trailing newline). */
  record(metrics: MetricRecord, time: Date = new Date()): string {
    if (!Number.isSafeInteger(metrics.step) || metrics.step < 0) {
      throw new MetricsError('bad-metric', `metrics: step must be a whole number ≥ 0, got ${metrics.step}`);
    }
    const out: Record<string, number | string | null> = { step: metrics.step };
    if (metrics.loss !== undefined) out.loss = finite(metrics.loss, 'loss');
    out.time = time.toISOString();
    for (const [name, value] of Object.entries(metrics)) {
      if (name === 'step' || name === 'loss' || name === 'time' || value === undefined) continue;
      out[name] = finite(value, name);
    }
    const line = `${JSON.stringify(out)}\n`;
    this.lines.push(line);
    this.sink?.(line);
    return line;
  }

  /** Number of records so far. */
  get size(): number {
    return this.lines.length;
  }

  /** The whole log as JSON Lines text. */
  toString(): string {
    return this.lines.join('');
  }

  /** The whole log as UTF-8 bytes, e.g. to seal as a job output. */
  toBytes(): Uint8Array {
    return new TextEncoder().encode(this.toString());
  }
}

function finite(value: unknown, name: string): number | null {
  if (typeof value !== 'number') {
    throw new MetricsError('bad-metric', `metrics: ${name} must be a number, got ${typeof value}`);
  }
  return Number.isFinite(value) ? value : null;
}

/** Reads a metrics log back (for reports and tests); names the line of a malformed record. */
export function parseMetrics(text: string): MetricLine[] {
  const out: MetricLine[] = [];
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    if (raw.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch {
      throw new MetricsError('bad-metric', `metrics line ${i + 1}: not JSON`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new MetricsError('bad-metric', `metrics line ${i + 1}: not a JSON object`);
    }
    const rec = v as Record<string, unknown>;
    if (typeof rec.step !== 'number' || typeof rec.time !== 'string') {
      throw new MetricsError(
        'bad-metric',
        `metrics line ${i + 1}: needs "step" (number) and "time" (string)`,
      );
    }
    for (const [k, x] of Object.entries(rec)) {
      if (k !== 'time' && x !== null && typeof x !== 'number') {
        throw new MetricsError('bad-metric', `metrics line ${i + 1}: ${k} is not a number`);
      }
    }
    out.push(rec as MetricLine);
  }
  return out;
}
