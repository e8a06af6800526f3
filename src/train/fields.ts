/**
 * Readers for the fields of a trainer's hyperparameters, shared by the llama and LoRA trainers. Each
 * trainer passes its own `fail`, so its refusals keep its error class and code while the wording
 * (`hyperparameters.<field> must be ...`) stays the same across trainers.
 */

/** Builds the trainer's refusal for `hyperparameters.<field>`. */
export type FieldFailure = (field: string, message: string) => Error;

export interface FieldReaders {
  /** A whole number in [min, max]; required unless a fallback is given. */
  int(raw: Record<string, unknown>, field: string, min: number, max: number, fallback?: number): number;
  /** A finite number in [min, max] (in (min, max] with openMin); the fallback when absent. */
  real(
    raw: Record<string, unknown>,
    field: string,
    min: number,
    max: number,
    fallback: number,
    openMin?: boolean,
  ): number;
  /**
   * The learning-rate schedule ("cosine" by default) and its warmup steps (default min(100, steps/10)
   * for cosine, 0 for constant).
   */
  schedule(raw: Record<string, unknown>, steps: number): { schedule: 'cosine' | 'constant'; warmup: number };
}

export function fieldReaders(fail: FieldFailure): FieldReaders {
  const int: FieldReaders['int'] = (raw, field, min, max, fallback) => {
    const v = raw[field];
    if (v === undefined) {
      if (fallback === undefined) throw fail(field, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v))
      throw fail(field, `must be an integer, got ${JSON.stringify(v)}`);
    if (v < min || v > max) throw fail(field, `must be between ${min} and ${max}, got ${v}`);
    return v;
  };
  const real: FieldReaders['real'] = (raw, field, min, max, fallback, openMin = false) => {
    const v = raw[field];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw fail(field, `must be a number, got ${JSON.stringify(v)}`);
    if (v < min || v > max || (openMin && v === min)) {
      throw fail(field, `must be ${openMin ? 'above' : 'at least'} ${min} and at most ${max}, got ${v}`);
    }
    return v;
  };
  const schedule: FieldReaders['schedule'] = (raw, steps) => {
    const s = raw.schedule ?? 'cosine';
    if (s !== 'cosine' && s !== 'constant') {
      throw fail('schedule', `must be "cosine" or "constant", got ${JSON.stringify(s)}`);
    }
    const warmup = int(raw, 'warmup', 0, steps, s === 'cosine' ? Math.min(100, Math.floor(steps / 10)) : 0);
    return { schedule: s, warmup };
  };
  return { int, real, schedule };
}
