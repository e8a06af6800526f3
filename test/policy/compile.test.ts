import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { policyEnvironment } from '../../src/policy/compile.js';
import { KNOWN_FUNCTIONS } from '../../src/policy/cost.js';
import {
  compilePolicy,
  DEFAULT_RESOURCE_POLICY,
  POLICY_LIMITS,
  PolicyCache,
  PolicyError,
} from '../../src/policy/index.js';

function refusal(source: string): PolicyError {
  try {
    compilePolicy(source);
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return e as PolicyError;
  }
  throw new Error(`compiled: ${source}`);
}

describe('compilePolicy', () => {
  it('compiles the default policy into its five top-level conjuncts', () => {
    const p = compilePolicy(DEFAULT_RESOURCE_POLICY);
    expect(p.source).toBe(DEFAULT_RESOURCE_POLICY);
    expect(p.conjuncts.map((c) => [c.line, c.source.slice(0, 20)])).toEqual([
      [1, '"cpu0" in submods'],
      [2, 'cpu.status == "affir'],
      [3, 'gpus.all(g, g.status'],
      [4, 'submods.all(n, submo'],
      [5, 'dev_mode || !submods'],
    ]);
  });

  it('keeps each conjunct as written, closing parentheses included', () => {
    const p = compilePolicy(
      '(cpu.status == "affirming" || (dev_mode && (tee == "sample"))) && tenant == "a"',
    );
    expect(p.conjuncts.map((c) => c.source)).toEqual([
      'cpu.status == "affirming" || (dev_mode && (tee == "sample"))',
      'tenant == "a"',
    ]);
    expect(p.conjuncts[1]).toMatchObject({ line: 1, column: 67, offset: 66 });
  });

  it('reports a syntax error with its line and column', () => {
    const e = refusal('cpu.status == "affirming"\n  && && tee == "tdx"');
    expect(e.code).toBe('policy-syntax');
    expect([e.line, e.column]).toEqual([2, 6]);
    expect(e.message).toMatch(/^policy-syntax at line 2, column 6: /);
    expect(e.excerpt).toBe('  && && tee == "tdx"\n     ^');
  });

  it('reports an unterminated string and an unexpected end', () => {
    expect(refusal('tee == "tdx').code).toBe('policy-syntax');
    const eof = refusal('tee ==');
    expect(eof.code).toBe('policy-syntax');
    expect(eof.detail).toMatch(/EOF/);
  });

  it('reports a misspelt field and an unknown variable as type errors, with position', () => {
    const field = refusal('cpu.statuss == "affirming"');
    expect(field.code).toBe('policy-type');
    expect(field.detail).toMatch(/statuss/);
    expect([field.line, field.column]).toEqual([1, 5]);
    const variable = refusal('true &&\n  gpu.status == "affirming"');
    expect(variable.code).toBe('policy-type');
    expect(variable.detail).toMatch(/gpu/);
    expect(variable.line).toBe(2);
  });

  it('reports comparing a string field with a number as a type error', () => {
    expect(refusal('cpu.status == 1').code).toBe('policy-type');
    expect(refusal('resource.repository + 1 == tenant').code).toBe('policy-type');
  });

  it('refuses a policy that is not boolean', () => {
    const e = refusal('cpu.status');
    expect(e.code).toBe('policy-not-bool');
    expect(e.detail).toMatch(/string/);
  });

  it('refuses an empty policy', () => {
    expect(refusal('').code).toBe('policy-empty');
    expect(refusal('  \n ').code).toBe('policy-empty');
  });

  it('refuses regular expressions and cel.bind, naming the alternative', () => {
    const m = refusal('tee == "tdx" && cpu.claims.mr_td.matches("^ab")');
    expect(m.code).toBe('policy-forbidden');
    expect(m.detail).toMatch(/startsWith/);
    expect(m.column).toBe(17);
    expect(refusal('cel.bind(x, tee, x == "tdx")').code).toBe('policy-forbidden');
  });

  it('bounds size: source length, AST nodes, depth, comprehension nesting', () => {
    expect(refusal(`tee == "${'a'.repeat(POLICY_LIMITS.maxSourceLength)}"`).code).toBe('policy-too-large');
    expect(refusal(Array(600).fill('dev_mode').join(' && ')).code).toBe('policy-too-large');
    expect(refusal(`${'('.repeat(40)}dev_mode${')'.repeat(40)}`).code).toBe('policy-too-large');
    const nested = refusal('gpus.all(a, gpus.all(b, gpus.all(c, a.name == c.name)))');
    expect(nested.code).toBe('policy-too-large');
    expect(nested.detail).toMatch(/at most 2 deep/);
    // Two levels, and comprehensions side by side, are fine.
    compilePolicy(
      'gpus.all(a, gpus.exists(b, a.trust.hardware != b.trust.hardware)) && gpus.all(g, g.insecure == false)',
    );
    compilePolicy('submods.all(n, submods[n].reasons.all(r, r.check != "debug"))');
    compilePolicy(
      'gpus.filter(g, g.kind == "nvidia").all(g, g.reasons.size() == 0 || g.reasons.all(r, r.status == "none"))',
    );
    // A comprehension over the result of another is not nesting.
    compilePolicy('gpus.map(g, g.reasons.map(r, r.check)).all(l, l.all(c, c != "debug"))');
  });

  it('estimates the worst-case cost and refuses policies that could run long on hostile claims', () => {
    expect(compilePolicy(DEFAULT_RESOURCE_POLICY).cost).toBeLessThan(10_000);
    const costly = (src: string) => {
      const e = refusal(src);
      expect(e.code, src).toBe('policy-too-costly');
      return e;
    };
    // A walk over a claim list inside another: thousands × thousands × thousands of steps.
    expect(costly('cpu.claims.l.all(x, cpu.claims.l.exists(y, y == x))').detail).toMatch(/x in list/);
    // A walk over a claim list with a list-sized membership test in its body …
    costly('tee == "tdx" && cpu.claims.l.all(x, x in cpu.claims.l)');
    costly('gpus.all(g, cpu.claims.l.all(x, x in cpu.claims.l))');
    // … or a list concatenation in its body.
    costly('cpu.claims.l.map(x, cpu.claims.l + cpu.claims.l).size() > 0');
    // The same checks written with cheap operations are fine.
    expect(compilePolicy('cpu.claims.mr_td in cpu.claims.rtmrs').cost).toBeLessThan(
      POLICY_LIMITS.maxCost / 4,
    );
    expect(compilePolicy('cpu.claims.measurements.all(m, m in ["aa", "bb"])').cost).toBeLessThan(
      POLICY_LIMITS.maxCost,
    );
    // The estimate does not know that the GPUs share the input's 4096 values: 16 × 4096 walks.
    costly('gpus.all(g, g.claims.measurements.all(m, m in ["aa", "bb"]))');
    expect(compilePolicy('cpu.claims.l.exists(x, x == "aa")').cost).toBeLessThan(100_000);
    expect(compilePolicy('submods.all(n, submods[n].reasons.all(r, r.check != "debug"))').cost).toBeLessThan(
      POLICY_LIMITS.maxCost,
    );
  });

  it('counts the length of strings: the reported policies that froze the broker are refused', () => {
    const costly = (src: string) => {
      const e = refusal(src);
      expect(e.code, src.slice(0, 60)).toBe('policy-too-costly');
    };
    const A = 'A'.repeat(POLICY_LIMITS.maxStringLiteral);
    const half = 'A'.repeat(POLICY_LIMITS.maxStringLiteral / 2);
    // Each of these was estimated at a few steps per node and took seconds on the largest input.
    costly(`gpus.all(g, cpu.claims.l.all(x, "${A}".size() > 0))`);
    costly(`cpu.claims.l.all(x, "${A}".size() > 0)`);
    costly(`cpu.claims.l.all(x, ("${half}" + "${half}").size() > 0)`);
    costly(`cpu.claims.l.all(x, "${A}".indexOf("B") < 0)`);
    costly(`cpu.claims.l.all(x, "${A}".lowerAscii() != "")`);
    // Work on the input's strings is bounded by INPUT_LIMITS.maxStringLength, not by the source.
    costly('gpus.all(g, cpu.claims.s.size() > 0)');
    costly('gpus.all(g, (cpu.claims.s + cpu.claims.s).contains("x"))');
    costly('cpu.claims.l.all(x, x.lowerAscii() != "")');
    // Values that grow: split() makes one entry per character, join() and map() add up their parts.
    costly('cpu.claims.s.split("").all(c, c != "x")');
    costly(`cpu.claims.l.map(x, "${A}").join().size() > 0`);
    costly('gpus.all(g, bytes(cpu.claims.s).json().size() > 0)');
    costly('cpu.claims.l.all(x, now.getHours("Europe/Paris") > 1)');
    // The same work once, outside any walk, is fine.
    expect(compilePolicy(`"${A}".size() > 0 && cpu.claims.s.size() < 100`).cost).toBeLessThan(
      POLICY_LIMITS.maxCost / 4,
    );
    expect(compilePolicy('cpu.claims.l.all(x, x.startsWith("ab"))').cost).toBeLessThan(
      POLICY_LIMITS.maxCost / 4,
    );
  });

  it('counts a backwards search per character of the string times the pattern', () => {
    // V8's lastIndexOf compares the pattern at every position: on a 64 Ki-character claim, a 1 KiB
    // pattern took ≈ 20 ms per call and fourteen of them fitted under the bound before.
    const pattern = `${'a'.repeat(POLICY_LIMITS.maxStringLiteral - 1)}c`;
    const e = refusal(`cpu.claims.s.lastIndexOf("${pattern}") >= -1`);
    expect(e.code).toBe('policy-too-costly');
    expect(refusal('cpu.claims.s.lastIndexOf(cpu.claims.t) >= -1').code).toBe('policy-too-costly');
    // A short pattern stays cheap, as does indexOf (linear in V8) with the long one.
    expect(compilePolicy('cpu.claims.s.lastIndexOf("/") >= 0').cost).toBeLessThan(POLICY_LIMITS.maxCost / 4);
    expect(compilePolicy(`cpu.claims.s.indexOf("${pattern}") >= -1`).cost).toBeLessThan(
      POLICY_LIMITS.maxCost / 4,
    );
  });

  it('walks a list joined with a map as a list: its elements are bounded, not only its keys', () => {
    // The variable was bound to the map's one-character keys, while at run time it was each 64 Ki-
    // character element of the list: estimated at 1.5e5 steps, this took over half a second.
    const costly = [
      '(tenant != "" ? dyn(cpu.claims.l.map(x, cpu.claims.s)) : dyn({"a": 1})).all(y, y.size() > 0)',
      'optional.of(dyn(cpu.claims.l.map(x, cpu.claims.s))).orValue(dyn({"a": 1})).all(y, y.size() > 0)',
      '(tenant != "" ? dyn(cpu.claims.l) : dyn({"a": 1})).exists(y, y.split("").size() == 0)',
    ];
    for (const src of costly) expect(refusal(src).code, src).toBe('policy-too-costly');
    // Two maps joined still bind keys.
    expect(compilePolicy('(tenant != "" ? cpu.claims : init_data).all(k, k != "x")').cost).toBeLessThan(
      POLICY_LIMITS.maxCost / 4,
    );
  });

  it('bounds string literals and refuses duration() on anything but a short literal', () => {
    const long = refusal(`tee == "${'A'.repeat(POLICY_LIMITS.maxStringLiteral + 1)}"`);
    expect(long.code).toBe('policy-too-large');
    expect(long.detail).toMatch(/string literal/);
    expect(long.column).toBe(8);
    expect(refusal(`cpu.claims.b == b"${'A'.repeat(POLICY_LIMITS.maxStringLiteral + 1)}"`).code).toBe(
      'policy-too-large',
    );
    compilePolicy(`tee != "${'A'.repeat(POLICY_LIMITS.maxStringLiteral)}"`);
    // The library's duration parser takes cubic time on a long run of digits (4000 digits: 20 s).
    const claim = refusal('now - timestamp(cpu.claims.t) < duration(cpu.claims.d)');
    expect(claim.code).toBe('policy-forbidden');
    expect(claim.detail).toMatch(/duration\(\) takes a string literal/);
    expect(refusal(`now - timestamp(cpu.claims.t) < duration("${'1'.repeat(65)}s")`).code).toBe(
      'policy-forbidden',
    );
    compilePolicy('now - timestamp(cpu.claims.t) < duration("24h")');
  });

  it('knows the cost of every function of the policy environment', () => {
    const names = new Set(
      policyEnvironment()
        .getDefinitions()
        .functions.map((f) => f.name),
    );
    const unknown = [...names].filter((n) => !KNOWN_FUNCTIONS.has(n) && n !== 'matches' && n !== 'bind');
    expect(unknown).toEqual([]);
  });

  it('offers optional access for claims that may be absent', () => {
    compilePolicy('cpu.claims.?mr_td.orValue("") == "ab"');
  });
});

describe('PolicyCache', () => {
  it('compiles a source once and caches errors too', () => {
    const cache = new PolicyCache(2);
    const a = cache.get('dev_mode');
    expect(cache.get('dev_mode')).toBe(a);
    expect(() => cache.get('dev_mode &&')).toThrow(PolicyError);
    expect(() => cache.get('dev_mode &&')).toThrow(PolicyError);
    expect(cache.size).toBe(2);
    // Least recently used is evicted: 'dev_mode' was used before the bad policy.
    cache.get('!dev_mode');
    expect(cache.size).toBe(2);
    expect(cache.get('dev_mode')).not.toBe(a);
  });
});

describe('docs/policy.md', () => {
  it('every CEL example compiles, and the default policy shown is the one shipped', () => {
    const doc = readFileSync('docs/policy.md', 'utf8');
    const blocks = [...doc.matchAll(/```cel\n([\s\S]*?)```/g)].map((m) => m[1]!.trim());
    expect(blocks.length).toBeGreaterThanOrEqual(6);
    for (const b of blocks) expect(() => compilePolicy(b), b).not.toThrow();
    expect(blocks).toContain(DEFAULT_RESOURCE_POLICY);
  });
});

describe('src/policy is browser-safe', () => {
  it('imports no node: modules', () => {
    const files = readdirSync('src/policy').filter((f) => f.endsWith('.ts') && f !== 'node.ts');
    const offenders = files.filter((f) =>
      /from\s+['"]node:|import\(\s*['"]node:/.test(readFileSync(path.join('src/policy', f), 'utf8')),
    );
    expect(files.length).toBeGreaterThan(3);
    expect(offenders).toEqual([]);
  });
});
