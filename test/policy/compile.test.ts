import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { policyEnvironment } from '../../src/policy/compile.js';
import { KNOWN_FUNCTIONS } from '../../src/policy/cost.js';
import {
  compilePolicy,
  DEFAULT_RESOURCE_POLICY,
  evaluatePolicy,
  POLICY_LIMITS,
  PolicyCache,
  PolicyError,
} from '../../src/policy/index.js';
import { input, submod } from './helpers.js';

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
    // All GPUs' claims share the input's 4096 values: a walk over each GPU's list is not 16 × 4096.
    expect(compilePolicy('gpus.all(g, g.claims.measurements.all(m, m in ["aa", "bb"]))').cost).toBeLessThan(
      POLICY_LIMITS.maxCost / 2,
    );
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
    // A walk's items share the input's 256 Ki characters, but a walk inside another walks them again.
    costly('gpus.all(g, cpu.claims.l.all(x, x.lowerAscii() != ""))');
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

  it('accepts realistic appraisal policies that walk measurement lists (items share the input budget)', () => {
    const hex = (c: string) => c.repeat(96);
    const sources = [
      // String work on each item of a claim walk.
      'cpu.claims.rtmrs.all(r, r.size() == 96)',
      `cpu.claims.rtmrs.all(r, r.startsWith("${hex('0').slice(0, 32)}") || r.lowerAscii() == "${hex('a')}")`,
      `tee == "tdx" && cpu.status == "affirming" && cpu.claims.mr_td == "${hex('a')}"
        && cpu.claims.rtmrs.all(r, r.size() == 96)
        && cpu.claims.event_log.all(e, e.pcr_index > 1 || e.digest in ["${hex('b')}", "${hex('c')}"])`,
      // Walks over different claims share the input's budget.
      `tee == "tdx" && cpu.status == "affirming"
        && cpu.claims.rtmrs.all(r, r.size() == 96 && r != cpu.claims.mr_seam)
        && cpu.claims.event_log.all(e, e.pcr_index > 1 || e.digest.lowerAscii() in ["${hex('b')}", "${hex('c')}"])`,
      `tee == "snp" && cpu.claims.measurement in ["${hex('d')}", "${hex('e')}"] && !cpu.claims.debug
        && ["bootloader", "tee", "snp", "microcode"].all(k, cpu.claims.reported_tcb[k] >= cpu.claims.committed_tcb[k])`,
      // A walk over each GPU's measurements: all GPUs together hold at most the input's values.
      `gpus.all(g, g.status == "affirming" && g.claims.hwmodel == "GH100"
        && g.claims.measurements.all(m, m.index >= 0 && m.value.lowerAscii() in ["${hex('1')}", "${hex('2')}"]))`,
      'gpus.all(g, g.claims.measurements.all(m, m.value.size() == 96 && m.value != cpu.claims.mr_td))',
      // Two input strings compared inside nested walks.
      'gpus.all(g, gpus.all(h, g.claims.driver_version == h.claims.driver_version))',
      'gpus.all(g, g.claims.measurements.all(m, m.value != cpu.claims.mr_td && m.value != cpu.claims.mr_seam))',
      'cpu.claims.rtmrs.all(r, r == cpu.claims.mr_td || r != cpu.claims.mr_seam)',
    ];
    const gpu = submod({
      kind: 'nvidia',
      claims: {
        hwmodel: 'GH100',
        driver_version: '550.54.15',
        vbios_version: '96.00.5e.00.01',
        measurements: [1, 2].map((index) => ({ index, value: hex(String(index)).toUpperCase() })),
      },
    });
    const i = input({
      submods: {
        cpu0: submod({
          claims: {
            mr_td: hex('a'),
            mr_seam: hex('f'),
            rtmrs: [hex('a'), hex('0'), hex('a')],
            event_log: [
              { pcr_index: 0, digest: hex('b') },
              { pcr_index: 2, digest: hex('9') },
            ],
            measurement: hex('d'),
            debug: false,
            reported_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 },
            committed_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 },
          },
        }),
        gpu0: gpu,
        gpu1: gpu,
      },
    });
    for (const src of sources) {
      const p = compilePolicy(src);
      expect(p.cost, src).toBeLessThanOrEqual(POLICY_LIMITS.maxCost);
      // Whole TDX and SNP policies are judged each on its own TEE kind; the rest on a TDX CPU.
      const kind = src.startsWith('tee == "snp"') ? 'snp' : 'tdx';
      const subject = { ...i, submods: { ...i.submods, cpu0: { ...i.submods.cpu0!, kind } } };
      expect(evaluatePolicy(p, subject), src).toMatchObject({ allow: true });
    }
  });

  it('lets walks over different claims share the budget, but counts a claim walked twice twice', () => {
    const one = compilePolicy('cpu.claims.a.all(x, x.size() > 0)').cost;
    const cost = (src: string) => compilePolicy(src).cost;
    expect(cost('cpu.claims.a.all(x, x.size() > 0) && cpu.claims.b.all(x, x.size() > 0)')).toBeLessThan(
      one * 1.1,
    );
    expect(cost('cpu.claims.a.all(x, x.size() > 0) && init_data.b.all(x, x.size() > 0)')).toBeLessThan(
      one * 1.1,
    );
    // The same claim, by name or by literal key: the same part of the input, read twice.
    expect(cost('cpu.claims.a.all(x, x.size() > 0) && cpu.claims["a"].all(x, x.size() > 0)')).toBeGreaterThan(
      one * 1.9,
    );
    // An entry reached by a dynamic key may be any part of the claim: not a part
    // of its own beside its siblings.
    expect(
      cost('cpu.claims.m[cpu.claims.k].l.all(x, x.size() > 0) && cpu.claims.m.l.all(x, x.size() > 0)'),
    ).toBeGreaterThan(one * 1.9);
    // Another path to the same submodule is not a part of `cpu` either.
    expect(
      cost('cpu.claims.a.all(x, x.size() > 0) && submods.cpu0.claims.b.all(x, x.size() > 0)'),
    ).toBeGreaterThan(one * 1.9);
  });

  it('refuses policies that would turn the shared budget against it', () => {
    const costly = (src: string) => expect(refusal(src).code, src.slice(0, 80)).toBe('policy-too-costly');
    const A = 'A'.repeat(POLICY_LIMITS.maxStringLiteral);
    // Items that are copies of one long string: each copy counts (4096 × 64 Ki, 64 × 64 Ki).
    costly('cpu.claims.l.map(x, cpu.claims.s).all(y, y.lowerAscii() != "")');
    costly(`[${Array(64).fill('cpu.claims.s').join(', ')}].all(x, x.lowerAscii() != "")`);
    costly(
      '(cpu.claims.l + cpu.claims.l + cpu.claims.l + cpu.claims.l).all(x, x.lowerAscii() != x.upperAscii())',
    );
    // A literal added to each item: 4096 × 1 Ki characters.
    costly(`cpu.claims.l.all(x, (x + "${A}").lowerAscii() != "")`);
    costly(`cpu.claims.l.map(x, x + "${A}").all(y, y.size() > 0)`);
    // Items that grow: each x + x doubles what the next walk reads.
    costly('cpu.claims.l.map(x, x + x).map(x, x + x).map(x, x + x).all(x, x.size() > 0)');
    // Characters walked again on every iteration of an outer walk.
    costly('gpus.all(g, cpu.claims.l.all(x, x.size() > 0))');
    costly('gpus.all(g, gpus.all(h, g.claims.s.lowerAscii() == h.claims.s.lowerAscii()))');
    costly('cpu.claims.l.all(x, cpu.claims.l.all(y, x != y))');
    costly('cpu.claims.l.all(x, x.split("").all(c, c.lowerAscii() != "" && c.size() > 0))');
    costly('gpus.all(g, g.claims.l.all(x, x in cpu.claims.refs))');
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
