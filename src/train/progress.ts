/**
 * Training progress for people: one line per report ("step 120/500  loss 1.234  3,900 tok/s  ETA 0:42")
 * and a tracker that smooths throughput and the time per step, so the figures do not jump with every
 * batch. Pure: the caller passes the clock, which keeps both testable without timers.
 */

export interface ProgressFigures {
  /** Steps completed. */
  step: number;
  /** Steps of the whole job. */
  total: number;
  /** Loss of the latest step (or a smoothed loss); omitted from the line when absent. */
  loss?: number;
  /** Throughput in tokens per second (language models); wins over examplesPerSec when both are given. */
  tokensPerSec?: number;
  /** Throughput in examples per second. */
  examplesPerSec?: number;
  /** Time spent so far; with no etaMs, the ETA assumes the remaining steps go at the average pace. */
  elapsedMs?: number;
  /** Remaining time, when the caller has a better estimate (e.g. from {@link ThroughputTracker}). */
  etaMs?: number;
}

/** Formats a progress line: `step 120/500  loss 1.234  3,900 tok/s  ETA 0:42`. */
export function formatProgress(f: ProgressFigures): string {
  const parts = [`step ${f.step}/${f.total}`];
  if (f.loss !== undefined) parts.push(`loss ${formatLoss(f.loss)}`);
  if (f.tokensPerSec !== undefined) parts.push(`${formatRate(f.tokensPerSec)} tok/s`);
  else if (f.examplesPerSec !== undefined) parts.push(`${formatRate(f.examplesPerSec)} ex/s`);
  const eta = f.etaMs ?? averageEta(f);
  if (eta !== undefined) parts.push(`ETA ${formatDuration(eta)}`);
  return parts.join('  ');
}

function averageEta(f: ProgressFigures): number | undefined {
  if (f.elapsedMs === undefined || f.step <= 0) return undefined;
  return (f.elapsedMs / f.step) * Math.max(0, f.total - f.step);
}

/** Three decimals in the usual range; scientific notation where three decimals would hide the value. */
export function formatLoss(loss: number): string {
  if (!Number.isFinite(loss)) return String(loss);
  const a = Math.abs(loss);
  if (a !== 0 && (a < 0.001 || a >= 1e6)) return loss.toExponential(2);
  return loss.toFixed(3);
}

/** Whole numbers with thousands separators ("3,900"); one decimal below 10 ("2.5"). */
export function formatRate(rate: number): string {
  if (!Number.isFinite(rate) || rate < 0) return '?';
  if (rate < 10) return rate.toFixed(1);
  return groupThousands(Math.round(rate));
}

function groupThousands(n: number): string {
  // By hand rather than toLocaleString: the line must not depend on the process's locale.
  const digits = String(n);
  let out = '';
  for (let i = 0; i < digits.length; i++) {
    if (i > 0 && (digits.length - i) % 3 === 0) out += ',';
    out += digits[i];
  }
  return out;
}

/** `m:ss` below an hour, `h:mm:ss` above; `?` when unknown. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  const total = Math.round(ms / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

export interface TrackerOptions {
  /**
   * Weight of the newest interval in the exponential moving average, in (0, 1]. Default 0.1: about
   * the last ten reports count, enough to ride out one slow batch (a checkpoint, a retrace).
   */
  smoothing?: number;
}

/**
 * Smoothed throughput and ETA. Feed it the step count, the units (examples or tokens) done since the
 * previous report, and the clock; it keeps an exponential moving average of units per second and of
 * milliseconds per step. The first report only starts the clock.
 */
export class ThroughputTracker {
  private readonly alpha: number;
  private last: { step: number; at: number } | undefined;
  private rate: number | undefined;
  private msPerStep: number | undefined;

  constructor(opts: TrackerOptions = {}) {
    const a = opts.smoothing ?? 0.1;
    if (!(a > 0 && a <= 1)) throw new RangeError(`smoothing must be in (0, 1], got ${a}`);
    this.alpha = a;
  }

  /** Records that `step` steps are done at time `nowMs`, `units` of them since the previous report. */
  record(step: number, units: number, nowMs: number): void {
    const prev = this.last;
    this.last = { step, at: nowMs };
    if (prev === undefined) return;
    const dt = nowMs - prev.at;
    const steps = step - prev.step;
    // A clock that stands still or a step count that goes back (a resume) restarts the interval only.
    if (dt <= 0 || steps <= 0) return;
    this.rate = this.ema(this.rate, (units * 1000) / dt);
    this.msPerStep = this.ema(this.msPerStep, dt / steps);
  }

  private ema(prev: number | undefined, x: number): number {
    return prev === undefined ? x : prev + this.alpha * (x - prev);
  }

  /** Smoothed units per second; undefined before two reports. */
  get unitsPerSec(): number | undefined {
    return this.rate;
  }

  /** Remaining time for `total` steps; undefined before two reports. */
  etaMs(total: number): number | undefined {
    if (this.msPerStep === undefined || this.last === undefined) return undefined;
    return Math.max(0, total - this.last.step) * this.msPerStep;
  }
}
