import type { OnText } from './types.js';

/**
 * Applies stop strings to streamed text: passes text on as soon as it cannot be the start of a stop
 * string, holds back a tail that could be, and reports when one is complete. The text generated
 * (and streamed) is everything before the stop string that is complete first, as a generator that
 * stops at once would produce it; held text is released by `flush`.
 */
export class StopScanner {
  private all = '';
  private emitted = 0;
  private stopAt: number | undefined;

  private readonly stops: readonly string[];

  constructor(
    stops: readonly string[],
    private readonly emit: OnText,
  ) {
    // An empty stop string would end every generation before its first character.
    this.stops = stops.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.stopAt !== undefined;
  }

  /** The text so far, cut before the stop string once one is found. */
  get text(): string {
    return this.all.slice(0, this.stopAt ?? this.all.length);
  }

  /** Returns true once a stop string is complete; later text is ignored. */
  push(chunk: string): boolean {
    if (this.stopAt !== undefined) return true;
    this.all += chunk;
    // Text before `emitted` was already shown not to start a stop string. Generation stops where
    // the first stop string ends (ties: the longest), so the result does not depend on how the
    // text was split into chunks.
    let first = -1;
    let firstEnd = -1;
    for (const s of this.stops) {
      const i = this.all.indexOf(s, this.emitted);
      if (i < 0) continue;
      const end = i + s.length;
      if (first < 0 || end < firstEnd || (end === firstEnd && i < first)) {
        first = i;
        firstEnd = end;
      }
    }
    if (first >= 0) {
      this.stopAt = first;
      this.release(first);
      return true;
    }
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.all.length - this.emitted); k > hold; k--) {
        if (this.all.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    this.release(this.all.length - hold);
    return false;
  }

  /** Generation ended without a stop string: release what was held back. */
  flush(): void {
    this.release(this.all.length);
  }

  private release(upTo: number): void {
    if (upTo > this.emitted) this.emit(this.all.slice(this.emitted, upTo));
    this.emitted = Math.max(this.emitted, upTo);
  }
}
