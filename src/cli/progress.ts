/** A one-line progress bar on stderr, shown only on a terminal and only for long work. */

const MIN_BYTES = 100 * 1000 * 1000;

export interface Progress {
  update(done: number): void;
  finish(): void;
}

const silent: Progress = { update() {}, finish() {} };

export function progressBar(label: string, total: number | undefined, quiet: boolean): Progress {
  const tty = process.stderr.isTTY;
  if (quiet || !tty || (total !== undefined && total < MIN_BYTES)) return silent;
  const start = Date.now();
  let last = 0;
  const draw = (done: number) => {
    const secs = Math.max((Date.now() - start) / 1000, 1e-3);
    const rate = done / secs;
    const speed = `${(rate / 1e6).toFixed(0)} MB/s`;
    let line: string;
    if (total) {
      const frac = Math.min(done / total, 1);
      const width = 30;
      const filled = Math.round(frac * width);
      const eta = rate > 0 ? Math.ceil((total - done) / rate) : 0;
      line = `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${speed} eta ${eta}s`;
    } else {
      line = `${label} ${(done / 1e6).toFixed(0)} MB ${speed}`;
    }
    process.stderr.write(`\r${line}\x1b[K`);
  };
  return {
    update(done) {
      const now = Date.now();
      if (now - last < 100) return;
      last = now;
      draw(done);
    },
    finish() {
      process.stderr.write('\r\x1b[K');
    },
  };
}

/** The part of a stream a spinner uses (process.stderr, or a test's stand-in). */
export interface SpinnerOutput {
  isTTY?: boolean;
  write(s: string): unknown;
}

const FRAMES = '⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏';

/**
 * A spinner with a label on a terminal, for a wait that has no measure (the first token of a reply).
 * It appears only after 100 ms, so a quick answer does not flicker, and `stop` erases it; on anything
 * but a terminal it writes nothing, so piped output and logs stay clean.
 */
export function spinner(label: string, out: SpinnerOutput = process.stderr): { stop(): void } {
  if (!out.isTTY) return { stop() {} };
  let frame = 0;
  const timer = setInterval(() => {
    out.write(`\r${FRAMES[frame++ % FRAMES.length]} ${label}\x1b[K`);
  }, 100);
  let stopped = false;
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      if (frame > 0) out.write('\r\x1b[K');
    },
  };
}
