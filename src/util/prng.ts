/**
 * Seeded random numbers for the trainers (initial weights, batch order) and federated learning (DP
 * noise), so that each is a pure function of its seed, independent of any engine's PRNG (which may
 * change between versions). Not a cryptographic generator: where the output must be unpredictable
 * (DP noise), the seed itself must be secret (drawn inside the TEE):
 * SplitMix32-style mixing to derive streams, xoshiro128** for sequences, Box–Muller for normals.
 * Everything is integer arithmetic plus Math.log/sqrt/cos, which V8 computes identically everywhere.
 */

/** A 32-bit finaliser (murmur3's fmix32 over a golden-ratio increment): well-mixed, never throws. */
export function mix32(x: number): number {
  let z = (x + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** The two 32-bit halves of a safe-integer seed (negative seeds wrap as 64-bit two's complement). */
export function seedWords(seed: number): [number, number] {
  const s = BigInt.asUintN(64, BigInt(seed));
  return [Number(s & 0xffffffffn), Number(s >> 32n)];
}

/** Hash of a seed and a few small integers (stream ids, counters) to one u32. */
export function hashWords(seed: number, ...words: number[]): number {
  const [lo, hi] = seedWords(seed);
  let h = mix32(lo ^ mix32(hi));
  for (const w of words) h = mix32(h ^ mix32(w >>> 0) ^ Math.floor(w / 0x100000000));
  return h;
}

/** xoshiro128**: a fast 32-bit generator with 128 bits of state. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | undefined;

  /** A stream determined by the seed and any number of stream ids (e.g. a tensor index). */
  constructor(seed: number, ...stream: number[]) {
    const h = hashWords(seed, ...stream);
    this.s0 = mix32(h);
    this.s1 = mix32(this.s0 ^ 1);
    this.s2 = mix32(this.s1 ^ 2);
    this.s3 = mix32(this.s2 ^ 3);
    // xoshiro must not start from the all-zero state.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in the open interval (0, 1), 53 bits. */
  uniform(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo + 0.5) / 9007199254740992;
  }

  /** An integer in [0, n), n ≤ 2^53. */
  below(n: number): number {
    return Math.min(n - 1, Math.floor(this.uniform() * n));
  }

  /** Standard normal (Box–Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spare !== undefined) {
      const v = this.spare;
      this.spare = undefined;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()));
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
