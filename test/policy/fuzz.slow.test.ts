import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  compilePolicy,
  DEFAULT_RESOURCE_POLICY,
  evaluatePolicy,
  INPUT_LIMITS,
  POLICY_LIMITS,
  PolicyError,
  type PolicyInput,
} from '../../src/policy/index.js';
import { input, submod } from './helpers.js';

// Heavier versions of the unit fuzz tests, and the cost bound checked against the clock.
describe('policy fuzzing (slow)', () => {
  it('arbitrary inputs never throw and are never allowed by the default policy', () => {
    const p = compilePolicy(DEFAULT_RESOURCE_POLICY);
    fc.assert(
      fc.property(fc.anything({ maxDepth: 5 }), (junk) => {
        expect(evaluatePolicy(p, junk as PolicyInput).allow).toBe(false);
      }),
      { numRuns: 20_000 },
    );
  });

  it('token soup either compiles within the cost bound or is a PolicyError', () => {
    const tokens = fc.constantFrom(
      'cpu',
      'gpus',
      'submods',
      'cpu.claims.l',
      'g',
      'x',
      '.',
      'status',
      'all',
      'exists',
      'map',
      '(',
      ')',
      ',',
      '==',
      '!=',
      'in',
      '+',
      '&&',
      '||',
      '!',
      '"a"',
      '1',
      '[',
      ']',
      'size',
      '?',
      ':',
      'tenant',
      'tee',
    );
    fc.assert(
      fc.property(fc.array(tokens, { maxLength: 30 }), (t) => {
        try {
          const p = compilePolicy(t.join(' '));
          expect(p.cost).toBeLessThanOrEqual(POLICY_LIMITS.maxCost);
          expect(typeof evaluatePolicy(p, input()).allow).toBe('boolean');
        } catch (e) {
          expect(e).toBeInstanceOf(PolicyError);
        }
      }),
      { numRuns: 20_000 },
    );
  });

  // The largest input allowed: a 64 Ki-character claim, 3000 claim strings, 16 submodules.
  function largestInput(): PolicyInput {
    const big = `${'a'.repeat(INPUT_LIMITS.maxStringLength - 1)}b`;
    const l = Array.from({ length: 3000 }, (_, i) => `${'ab'.repeat(20)}${i}`);
    const i = input({ submods: { cpu0: submod({ claims: { big, l } }) } });
    for (let n = 0; n < 15; n++) i.submods[`gpu${n}`] = submod({ kind: 'nvidia' });
    return i;
  }

  /** The fastest of a few evaluations, in ms (the slowest would measure the machine's load). */
  function evaluationMs(src: string, i: PolicyInput): { ms: number; cost: number } {
    const p = compilePolicy(src);
    let ms = Number.POSITIVE_INFINITY;
    for (let k = 0; k < 3; k++) {
      const t = performance.now();
      const d = evaluatePolicy(p, i);
      ms = Math.min(ms, performance.now() - t);
      expect(d.reasons.join()).not.toMatch(/invalid policy input/);
    }
    return { ms, cost: p.cost };
  }

  it('the costliest policies allowed finish in a few ms on the largest input allowed', () => {
    const i = largestInput();
    const clauses = (k: number, v: string) =>
      Array.from({ length: k }, (_, j) => `${v} != "${j}"`).join(' && ');
    const sources = [
      `cpu.claims.l.all(x, ${clauses(4, 'x')})`,
      'cpu.claims.l.exists(x, x == "nope") && cpu.claims.l.exists(x, x == "nope2")',
      `gpus.all(g, gpus.all(h, ${clauses(40, 'g.status')}))`,
      'cpu.claims.big.size() > 0 && cpu.claims.big.lowerAscii() != "" && cpu.claims.big.contains("c")',
      `cpu.claims.l.all(x, x.startsWith("ab") && x.endsWith("${'a'.repeat(1024)}") == false)`,
      'cpu.claims.big in cpu.claims.l || cpu.claims.l.join(",").size() > 0',
      `cpu.claims.big.lastIndexOf("${'a'.repeat(99)}c") >= -1`,
    ];
    for (const src of sources) {
      const { ms, cost } = evaluationMs(src, i);
      expect(cost).toBeGreaterThan(POLICY_LIMITS.maxCost / 20);
      // A few ms on the development machine; 100 ms leaves room for a busy one.
      expect(ms, `${src.slice(0, 60)}… cost ${cost}`).toBeLessThan(100);
    }
  });

  it('adversarial policies near the bound: refused, or evaluated in a few ms', () => {
    const i = largestInput();
    const literal = fc
      .integer({ min: 0, max: POLICY_LIMITS.maxStringLiteral })
      .map((n) => `"${'A'.repeat(n)}"`);
    const atom = (inWalk: boolean) =>
      fc.oneof(
        literal,
        fc.constantFrom('cpu.claims.big', 'tenant', 'cpu.status', ...(inWalk ? ['x', 'x'] : [])),
      );
    const text = (inWalk: boolean) =>
      fc.oneof(
        atom(inWalk),
        fc.tuple(atom(inWalk), atom(inWalk)).map(([a, b]) => `(${a} + ${b})`),
        fc
          .tuple(atom(inWalk), fc.constantFrom('lowerAscii', 'upperAscii', 'trim'))
          .map(([a, f]) => `${a}.${f}()`),
      );
    // Terms that are true, so that no walk stops early.
    const term = (inWalk: boolean) =>
      fc.oneof(
        text(inWalk).map((e) => `${e}.size() >= 0`),
        fc.tuple(text(inWalk), atom(inWalk)).map(([e, a]) => `${e}.indexOf(${a}) >= -1`),
        fc.tuple(text(inWalk), atom(inWalk)).map(([e, a]) => `(${e}.contains(${a}) || true)`),
        fc.tuple(text(inWalk), atom(inWalk)).map(([e, a]) => `(${e}.startsWith(${a}) || true)`),
        text(inWalk).map((e) => `${e} != "§"`),
        text(inWalk).map((e) => `${e}.split("").size() >= 0`),
        fc.constant('cpu.claims.l.join(",").size() >= 0'),
        text(inWalk).map((e) => `(${e} in cpu.claims.l || true)`),
      );
    const body = (inWalk: boolean) =>
      fc.array(term(inWalk), { minLength: 1, maxLength: 4 }).map((t) => t.join(' && '));
    const policy = fc.oneof(
      body(false),
      body(true).map((b) => `cpu.claims.l.all(x, ${b})`),
      body(false).map((b) => `gpus.all(g, ${b})`),
      body(true).map((b) => `gpus.all(g, cpu.claims.l.all(x, ${b}))`),
      body(true).map((b) => `cpu.claims.l.map(x, x + x).all(x, ${b})`),
    );
    let allowed = 0;
    let worst = { ms: 0, cost: 0, src: '' };
    fc.assert(
      fc.property(policy, (src) => {
        try {
          compilePolicy(src);
        } catch (e) {
          expect(e).toBeInstanceOf(PolicyError);
          return;
        }
        allowed++;
        const { ms, cost } = evaluationMs(src, i);
        if (ms > worst.ms) worst = { ms, cost, src };
        expect(ms, `${src.slice(0, 80)}… cost ${cost}`).toBeLessThan(100);
      }),
      { numRuns: 400 },
    );
    // The generator must reach both sides of the bound for the test to mean anything.
    expect(allowed).toBeGreaterThan(40);
    expect(allowed).toBeLessThan(400);
    console.log(`slowest allowed: ${worst.ms.toFixed(2)} ms, cost ${worst.cost}: ${worst.src.slice(0, 100)}`);
  });
});
