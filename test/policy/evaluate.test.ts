import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  compilePolicy,
  DEFAULT_RESOURCE_POLICY,
  evaluatePolicy,
  explain,
  type PolicyDecision,
  PolicyError,
  type PolicyInput,
  type PolicySubmod,
  PUBLIC_DENIAL_MESSAGE,
  preparePolicyInput,
} from '../../src/policy/index.js';
import { input, submod } from './helpers.js';

const defaultPolicy = compilePolicy(DEFAULT_RESOURCE_POLICY);
const MRTD = 'aa'.repeat(48);

function allowed(d: PolicyDecision): void {
  expect(d).toEqual({ allow: true, reasons: [] });
}

function denied(d: PolicyDecision, ...reasons: RegExp[]): void {
  expect(d.allow).toBe(false);
  expect(d.publicMessage).toBe(PUBLIC_DENIAL_MESSAGE);
  expect(d.reasons.length).toBeGreaterThan(0);
  for (const r of reasons)
    expect(
      d.reasons.some((x) => r.test(x)),
      `${r} in ${d.reasons.join(' | ')}`,
    ).toBe(true);
}

const sampleCpu = () =>
  submod({
    kind: 'sample',
    status: 'warning',
    insecure: true,
    trust: { hardware: 32, configuration: 2 },
    reasons: [{ check: 'insecure', status: 'warning', message: 'software-only TEE: insecure' }],
  });

describe('default resource policy', () => {
  it('allows an affirming CPU with affirming GPUs', () => {
    allowed(evaluatePolicy(defaultPolicy, input()));
  });

  it('allows an affirming CPU without GPUs', () => {
    allowed(evaluatePolicy(defaultPolicy, input({ submods: { cpu0: submod() } })));
  });

  it('denies a CPU whose status is warning, naming the clause and the finding', () => {
    const i = input();
    i.submods.cpu0 = submod({
      status: 'warning',
      reasons: [{ check: 'tcb', status: 'warning', message: 'TCB is OutOfDate' }],
    });
    denied(
      evaluatePolicy(defaultPolicy, i),
      /^failed \(line 2:5\): cpu\.status == "affirming"/,
      /^attestation: cpu0 \(tdx\) is warning — tcb \(warning\): TCB is OutOfDate$/,
    );
  });

  it('denies when any one GPU is contraindicated', () => {
    const i = input();
    i.submods.gpu1 = submod({ kind: 'nvidia', status: 'contraindicated' });
    denied(
      evaluatePolicy(defaultPolicy, i),
      /failed \(line 3:4\): gpus\.all/,
      /gpu1 \(nvidia\) is contraindicated/,
    );
  });

  it('denies a GPU with nothing judged (status none)', () => {
    const i = input();
    i.submods.gpu0 = submod({ kind: 'nvidia', status: 'none' });
    denied(evaluatePolicy(defaultPolicy, i), /gpus\.all/);
  });

  it('denies any other submodule that is not affirming', () => {
    const i = input();
    i.submods.tpm0 = submod({ kind: 'az-snp-vtpm', status: 'warning' });
    denied(evaluatePolicy(defaultPolicy, i), /failed \(line 4:4\): submods\.all/);
  });

  it('denies evidence without cpu0, even if every GPU is affirming', () => {
    const i = input();
    delete i.submods.cpu0;
    denied(evaluatePolicy(defaultPolicy, i), /failed \(line 1:1\): "cpu0" in submods/, /cpu\.status/);
  });

  it('denies the sample TEE', () => {
    denied(
      evaluatePolicy(defaultPolicy, input({ submods: { cpu0: sampleCpu() } })),
      /cpu\.status == "affirming"/,
      /failed \(line 5:5\): dev_mode \|\| !submods\.exists/,
      /cpu0 \(sample\) is warning — insecure/,
    );
  });

  it('treats a sample TEE as insecure even when the input says it is not and calls it affirming', () => {
    const forged = { ...sampleCpu(), insecure: false, status: 'affirming' };
    denied(
      evaluatePolicy(defaultPolicy, input({ submods: { cpu0: forged } })),
      /failed \(line 5:5\): dev_mode \|\| !submods\.exists/,
    );
    allowed(
      evaluatePolicy(compilePolicy('cpu.insecure && tee == "sample"'), input({ submods: { cpu0: forged } })),
    );
  });

  it('allows the sample TEE in dev mode, but not when it is contraindicated (debug, bad measurement)', () => {
    allowed(evaluatePolicy(defaultPolicy, input({ submods: { cpu0: sampleCpu() }, dev_mode: true })));
    const debug = { ...sampleCpu(), status: 'contraindicated' };
    denied(evaluatePolicy(defaultPolicy, input({ submods: { cpu0: debug }, dev_mode: true })), /cpu\.status/);
  });

  it('dev mode does not excuse a real TEE that is not affirming', () => {
    const i = input({ dev_mode: true });
    i.submods.cpu0 = submod({ status: 'warning' });
    denied(evaluatePolicy(defaultPolicy, i), /cpu\.status/);
  });
});

describe('custom policies', () => {
  const decide = (source: string, i: PolicyInput = input()) => evaluatePolicy(compilePolicy(source), i);

  it('pins the TDX MRTD', () => {
    allowed(decide(`tee == "tdx" && cpu.claims.mr_td == "${MRTD}"`));
    denied(decide(`tee == "tdx" && cpu.claims.mr_td == "${'bb'.repeat(48)}"`), /cpu\.claims\.mr_td ==/);
    denied(decide(`tee == "snp" && cpu.claims.mr_td == "${MRTD}"`), /failed \(line 1:1\): tee == "snp"/);
  });

  it('restricts a tenant to its own repository', () => {
    allowed(decide('resource.repository == tenant'));
    denied(
      decide('resource.repository == tenant', input({ tenant: 'globex' })),
      /resource\.repository == tenant/,
    );
  });

  it('reads numbers, trust claims, GPU lists, time and init data', () => {
    allowed(decide('cpu.claims.tcb_svn >= 3 && cpu.claims.tcb_svn == 3'));
    allowed(decide('cpu.trust.executables == 2 && cpu.trust.sourced_data == 0'));
    allowed(decide('size(gpus) == 2 && gpus.all(g, g.claims.hwmodel == "GH100" && g.kind == "nvidia")'));
    allowed(decide('gpus[1].name == "gpu1"'));
    allowed(decide('now < timestamp("2027-01-01T00:00:00Z") && now > timestamp("2026-01-01T00:00:00Z")'));
    allowed(
      decide(
        'init_data.image == "ghcr.io/acme/llm@sha256:01"',
        input({ init_data: { image: 'ghcr.io/acme/llm@sha256:01' } }),
      ),
    );
    allowed(decide('cpu.claims.?nope.orValue("x") == "x"'));
    allowed(decide('!has(init_data.image)'));
    allowed(
      decide('resource.type == "models" && resource.tag.startsWith("ll") && resource.uri.endsWith("/llama")'),
    );
  });

  it('orders GPUs by index, not by name', () => {
    const i = input({
      submods: { cpu0: submod(), gpu10: submod({ kind: 'nvidia' }), gpu2: submod({ kind: 'nvidia' }) },
    });
    allowed(decide('gpus.map(g, g.name) == ["gpu2", "gpu10"]', i));
  });
});

describe('evaluation errors deny and never throw', () => {
  it('a missing key denies with the reason', () => {
    denied(evaluatePolicy(compilePolicy('cpu.claims.mr_seam == "00"'), input()), /No such key: mr_seam/);
    denied(evaluatePolicy(compilePolicy('init_data.image == "x"'), input()), /No such key: image/);
  });

  it('a wrong type denies with the reason', () => {
    denied(
      evaluatePolicy(compilePolicy('cpu.claims.tcb_svn.startsWith("3")'), input()),
      /^error .*startsWith/,
    );
    denied(evaluatePolicy(compilePolicy('cpu.claims.mr_td > 5'), input()), /error/);
  });

  it('errors inside walks are absorbed as CEL says, and the one reported reads as before', () => {
    // Evaluation skips the library's highlighted excerpt and stack trace (quiet.ts): absorption by
    // || and && and the walks' error semantics must not change, nor the reason of a failing policy.
    const i = input();
    i.submods.cpu0!.claims.l = ['a', 1, { k: 2 }, [3]];
    allowed(evaluatePolicy(compilePolicy('cpu.claims.l.all(x, x.nokey == 1 || true)'), i));
    allowed(evaluatePolicy(compilePolicy('cpu.claims.l.all(x, !(x.size() < 0 && false))'), i));
    allowed(evaluatePolicy(compilePolicy('cpu.claims.l.exists(x, x.k == 2)'), i));
    // No item is false, some fail: the walk's error is the reason.
    expect(evaluatePolicy(compilePolicy('cpu.claims.l.all(x, x.k == 2)'), i).reasons).toEqual([
      'error (line 1:1): cpu.claims.l.all(x, x.k == 2): No such key: k',
    ]);
    const padding = Array.from({ length: 40 }, (_, j) => `tenant != "t${j}"`).join('\n  && ');
    const d = evaluatePolicy(
      compilePolicy(`${padding}\n  && cpu.claims.l.all(x, x.k == 2 || x.nokey == 1)`),
      i,
    );
    expect(d.reasons).toEqual([
      'error (line 41:6): cpu.claims.l.all(x, x.k == 2 || x.nokey == 1): No such key: nokey',
    ]);
    // Outside evaluation, the library's errors keep their excerpt and stacks their frames.
    expect(() => compilePolicy('tenant == 1 +')).toThrow(PolicyError);
    expect(Error.stackTraceLimit).toBeGreaterThan(0);
    let libraryError: unknown;
    try {
      // The library's own check, whose message carries the excerpt.
      compilePolicy('cpu.claims.l.all(x, x == 1) && tenant.nosuch == 1');
    } catch (e) {
      libraryError = e;
    }
    expect(libraryError).toBeInstanceOf(PolicyError);
    expect(new Error('x').stack?.split('\n').length).toBeGreaterThan(1);
  });

  it('a non-boolean result denies', () => {
    const i = input();
    i.submods.cpu0!.claims.flag = 'yes';
    denied(evaluatePolicy(compilePolicy('cpu.claims.flag'), i), /not a bool/);
  });

  it('bad input data denies with what is wrong', () => {
    const bad = (over: Record<string, unknown>, why: RegExp) =>
      denied(evaluatePolicy(defaultPolicy, { ...input(), ...over } as PolicyInput), why);
    bad({ now: 'yesterday' }, /invalid policy input: now must be a valid Date/);
    bad({ dev_mode: 'true' }, /dev_mode must be a boolean/);
    bad({ submods: [] }, /submods must be a map/);
    bad({ submods: { cpu0: { ...submod(), status: 2 } } }, /submods\.cpu0\.status must be a string/);
    bad({ submods: { cpu0: submod({ trust: { hardware: 300 } }) } }, /trust\.hardware must be an integer/);
    bad({ submods: { cpu0: submod({ claims: { x: Number.NaN } }) } }, /claims\.x is not a finite number/);
    bad({ submods: { cpu0: submod({ claims: { f: () => 1 } }) } }, /not JSON/);
    bad({ resource: null }, /resource must be a map/);
    bad(
      { submods: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`gpu${i}`, submod()])) },
      /more than 16/,
    );
    const deep: Record<string, unknown> = {};
    let d = deep;
    for (let i = 0; i < 40; i++) d = d.x = {} as Record<string, unknown>;
    bad({ submods: { cpu0: submod({ claims: deep }) } }, /nested deeper/);
    bad({ submods: { cpu0: submod({ claims: { l: Array(4100).fill(1) } }) } }, /more than 4096 values/);
    const reasons = Array(1100).fill({ check: 'c', status: 'warning', message: 'm' });
    bad({ submods: { cpu0: submod({ reasons }) } }, /more than 4096 values/);
    // Strings of claims, reasons and init data share 256 Ki characters, keys included (cost.ts relies on it).
    const s = 'a'.repeat(60_000);
    bad(
      { submods: { cpu0: submod({ claims: { a: s, b: s, c: s, d: s, e: s } }) } },
      /more than 262144 characters/,
    );
    bad(
      { init_data: Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`${i}${s}`, 1])) },
      /characters/,
    );
    bad(
      { submods: { cpu0: submod({ claims: { [`k${'a'.repeat(70_000)}`]: 1 } }) } },
      /a key of .* is longer/,
    );
    const many = Array(100).fill({ check: 'c', status: 'warning', message: 'm'.repeat(3000) });
    bad({ submods: { cpu0: submod({ reasons: many }) } }, /characters/);
    // Submodules' names, statuses and kinds count too: a walk over the GPUs sums them.
    const gpus = (over: (n: number) => Partial<PolicySubmod>, names = (n: number) => `gpu${n}`) =>
      Object.fromEntries(Array.from({ length: 5 }, (_, n) => [names(n), submod(over(n))]));
    bad({ submods: gpus(() => ({ status: s })) }, /more than 262144 characters/);
    bad({ submods: gpus(() => ({ kind: s })) }, /more than 262144 characters/);
    bad(
      {
        submods: gpus(
          () => ({}),
          (n) => `${n}${s.slice(0, 30_000)}`,
        ),
      },
      /more than 262144 characters/,
    );
    expect(
      evaluatePolicy(defaultPolicy, input({ submods: { cpu0: submod({ claims: { a: s, b: s } }) } })).allow,
    ).toBe(true);
    for (const junk of [null, undefined, 42, 'x', [], new Date()]) {
      denied(evaluatePolicy(defaultPolicy, junk as unknown as PolicyInput), /invalid policy input/);
    }
  });

  it('claims cannot reach JavaScript object internals', () => {
    denied(
      evaluatePolicy(compilePolicy('has(cpu.claims.constructor) || cpu.claims.toString == ""'), input()),
    );
  });

  it('the public message never carries the reasons', () => {
    const i = input();
    i.submods.cpu0 = submod({
      status: 'warning',
      reasons: [{ check: 'tcb', status: 'warning', message: 'secret-detail' }],
    });
    const d = evaluatePolicy(defaultPolicy, i);
    expect(d.publicMessage).toBe('denied by policy');
    expect(d.reasons.join('\n')).toMatch(/secret-detail/);
    expect(Object.keys(d).sort()).toEqual(['allow', 'publicMessage', 'reasons']);
    expect(evaluatePolicy(defaultPolicy, input()).publicMessage).toBeUndefined();
  });

  it('fast-check: arbitrary inputs never throw and are never allowed by the default policy', () => {
    fc.assert(
      fc.property(fc.anything(), (junk) => {
        const d = evaluatePolicy(defaultPolicy, junk as PolicyInput);
        expect(d.allow).toBe(false);
        expect(d.publicMessage).toBe(PUBLIC_DENIAL_MESSAGE);
        expect(explain(defaultPolicy, junk as PolicyInput).allow).toBe(false);
      }),
      { numRuns: 200 },
    );
  });

  it('fast-check: well-formed inputs with random statuses and claims never throw; allow iff all affirming', () => {
    const status = fc.constantFrom('affirming', 'warning', 'contraindicated', 'none', '', 'AFFIRMING');
    const sub = fc.record({
      status,
      trust: fc.dictionary(
        fc.constantFrom('hardware', 'executables', 'x'),
        fc.integer({ min: -128, max: 127 }),
      ),
      claims: fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 3 })),
      kind: fc.constantFrom('tdx', 'snp', 'nvidia', 'sample', ''),
      insecure: fc.boolean(),
      reasons: fc.array(fc.record({ check: fc.string(), status, message: fc.string() }), { maxLength: 3 }),
    });
    const policies = [
      defaultPolicy,
      compilePolicy(`cpu.claims.mr_td == "${MRTD}" && resource.repository == tenant`),
      compilePolicy('gpus.all(g, g.trust.hardware < 32 && g.claims.size() >= 0u) || cpu.claims.x.y == 1'),
    ];
    fc.assert(
      fc.property(
        fc.dictionary(fc.constantFrom('cpu0', 'gpu0', 'gpu1', 'gpu7', 'x'), sub, { maxKeys: 5 }),
        fc.boolean(),
        fc.string(),
        (submods, devMode, tenant) => {
          const i = input({ submods, dev_mode: devMode, tenant });
          for (const p of policies) {
            const d = evaluatePolicy(p, i);
            expect(d.reasons.length === 0).toBe(d.allow);
          }
          const d = evaluatePolicy(defaultPolicy, i);
          const isInsecure = (s: { insecure: boolean; kind: string }) => s.insecure || s.kind === 'sample';
          const every = Object.values(submods).every(
            (s) => s.status === 'affirming' || (devMode && isInsecure(s) && s.status === 'warning'),
          );
          const insecure = Object.values(submods).some(isInsecure);
          expect(d.allow).toBe('cpu0' in submods && every && (devMode || !insecure));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('fast-check: compiling arbitrary text either succeeds or throws a PolicyError', () => {
    const tokens = fc.constantFrom(
      'cpu',
      '.',
      'status',
      '==',
      '"a"',
      '&&',
      '||',
      '(',
      ')',
      'gpus',
      'all',
      ',',
      'g',
      '1',
      '!',
      'in',
      'submods',
      '[',
      ']',
      '?',
      ':',
      'tee',
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.array(tokens, { maxLength: 12 }).map((t) => t.join(' ')),
        ),
        (src) => {
          try {
            const p = compilePolicy(src);
            expect(typeof evaluatePolicy(p, input()).allow).toBe('boolean');
          } catch (e) {
            expect(e).toBeInstanceOf(PolicyError);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('explain', () => {
  it('lists every conjunct with its outcome and the attestation findings', () => {
    const i = input();
    i.submods.gpu0 = submod({
      kind: 'nvidia',
      status: 'contraindicated',
      reasons: [{ check: 'rim', status: 'contraindicated', message: 'measurement 5 differs' }],
    });
    const x = explain(defaultPolicy, i);
    expect(x.allow).toBe(false);
    expect(x.publicMessage).toBe(PUBLIC_DENIAL_MESSAGE);
    expect(x.conjuncts.map((c) => c.outcome)).toEqual(['true', 'true', 'false', 'false', 'true']);
    expect(x.conjuncts.filter((c) => c.outcome !== 'true').map((c) => c.line)).toEqual([3, 4]);
    expect(x.conjuncts[2]!.source).toBe(
      'gpus.all(g, g.status == "affirming" || (dev_mode && g.insecure && g.status == "warning"))',
    );
    expect(x.attestation).toContainEqual({
      submod: 'gpu0',
      kind: 'nvidia',
      status: 'contraindicated',
      reasons: ['rim (contraindicated): measurement 5 differs'],
    });
  });

  it('reports errors per conjunct, and all true when allowed', () => {
    const p = compilePolicy('tee == "tdx"\n&& cpu.claims.nope == "1"\n&& tenant == "acme"');
    const x = explain(p, input());
    expect(x.conjuncts).toEqual([
      { source: 'tee == "tdx"', line: 1, column: 1, outcome: 'true' },
      { source: 'cpu.claims.nope == "1"', line: 2, column: 4, outcome: 'error', error: 'No such key: nope' },
      { source: 'tenant == "acme"', line: 3, column: 4, outcome: 'true' },
    ]);
    const ok = explain(defaultPolicy, input());
    expect(ok.allow).toBe(true);
    expect(ok.conjuncts.every((c) => c.outcome === 'true')).toBe(true);
  });

  it('treats a policy that is not a conjunction as one clause', () => {
    const x = explain(compilePolicy('tee == "snp" || tenant == "globex"'), input());
    expect(x.conjuncts).toHaveLength(1);
    expect(x.conjuncts[0]).toMatchObject({ source: 'tee == "snp" || tenant == "globex"', outcome: 'false' });
  });

  it('explains invalid input instead of throwing', () => {
    const x = explain(defaultPolicy, { nonsense: true } as unknown as PolicyInput);
    expect(x.allow).toBe(false);
    expect(x.conjuncts.every((c) => c.outcome === 'error' && /submods must be a map/.test(c.error!))).toBe(
      true,
    );
  });

  it('a prepared input is reused across policies with the same results', () => {
    const prepared = preparePolicyInput(input());
    allowed(evaluatePolicy(defaultPolicy, prepared));
    denied(evaluatePolicy(compilePolicy('tenant == "globex"'), prepared));
  });
});
