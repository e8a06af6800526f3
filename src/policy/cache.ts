/**
 * Compiled policies by source text. Compiling costs far more than evaluating, so the key broker
 * compiles each stored policy once; a bounded LRU keeps memory flat however many policies pass by.
 */
import { type CompiledPolicy, compilePolicy, PolicyError } from './compile.js';

export class PolicyCache {
  readonly #entries = new Map<string, CompiledPolicy | PolicyError>();

  constructor(readonly maxEntries = 1024) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError('maxEntries must be ≥ 1');
  }

  /** The compiled policy for this source; throws its PolicyError (also cached) when it does not compile. */
  get(source: string): CompiledPolicy {
    let hit = this.#entries.get(source);
    if (hit !== undefined) {
      // Re-insert to mark as most recently used (Map keeps insertion order).
      this.#entries.delete(source);
    } else {
      try {
        hit = compilePolicy(source);
      } catch (e) {
        if (!(e instanceof PolicyError)) throw e;
        hit = e;
      }
      if (this.#entries.size >= this.maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
    }
    this.#entries.set(source, hit);
    if (hit instanceof PolicyError) throw hit;
    return hit;
  }

  get size(): number {
    return this.#entries.size;
  }
}
