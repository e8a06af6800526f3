/**
 * A small seeded generator for DP noise, so a round's noise is a pure function of (seed, round) and a
 * test or an auditor inside the TEE can replay it. The room may not import src/train's generator (floor-4
 * siblings stay apart), and the algorithm is a dozen lines: xoshiro128** seeded through murmur3's
 * fmix32, uniform doubles from 53 random bits, normals by Box–Muller. Only integer arithmetic plus
 * Math.log/sqrt/cos, which V8 computes identically everywhere. Not a cryptographic generator: the seed
 * must itself be secret (drawn inside the TEE), or the noise could be subtracted.
 */

function fmix32(x: number): number {
  let z = (x + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export class NoiseRng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | undefined;

  /** A stream for a safe-integer seed and stream ids (e.g. the round number). */
  constructor(seed: number, ...stream: number[]) {
    const s = BigInt.asUintN(64, BigInt(seed));
    let h = fmix32(Number(s & 0xffffffffn) ^ fmix32(Number(s >> 32n)));
    for (const w of stream) h = fmix32(h ^ fmix32(w >>> 0) ^ Math.floor(w / 0x100000000));
    this.s0 = fmix32(h);
    this.s1 = fmix32(this.s0 ^ 1);
    this.s2 = fmix32(this.s1 ^ 2);
    this.s3 = fmix32(this.s2 ^ 3);
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

  /** Uniform in [0, 1) with 53 random bits (a double's full precision, so the tails are not truncated). */
  uniform(): number {
    return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992;
  }

  /** Standard normal by Box–Muller; the second value of each pair is kept for the next call. */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    // 1 − u lies in (0, 1], so the logarithm is finite.
    const r = Math.sqrt(-2 * Math.log(1 - this.uniform()));
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }
}
