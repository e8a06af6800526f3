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

  it('the costliest policies allowed finish quickly on the largest input allowed', () => {
    // Every submodule's claims map and the list itself count too.
    const l = Array.from({ length: INPUT_LIMITS.maxValues - 32 }, (_, i) => `${'ab'.repeat(24)}${i}`);
    const i = input({ submods: { cpu0: submod({ claims: { l } }) } });
    for (let n = 0; n < 15; n++) i.submods[`gpu${n}`] = submod({ kind: 'nvidia' });
    const clauses = (k: number, v: string) =>
      Array.from({ length: k }, (_, j) => `${v} != "${j}"`).join(' && ');
    const sources = [
      `cpu.claims.l.all(x, ${clauses(60, 'x')})`,
      'cpu.claims.l.exists(x, x == "nope") && cpu.claims.l.exists(x, x == "nope2")',
      `gpus.all(g, gpus.all(h, ${clauses(40, 'g.status')}))`,
      `gpus.all(g, cpu.claims.l.all(x, ${clauses(5, 'x')}))`,
    ];
    for (const src of sources) {
      const p = compilePolicy(src);
      const t = performance.now();
      const d = evaluatePolicy(p, i);
      const ms = performance.now() - t;
      expect(d.reasons.join()).not.toMatch(/invalid policy input/);
      expect(ms, `${src.slice(0, 40)}… cost ${p.cost}`).toBeLessThan(1000);
    }
  });
});
