/**
 * Policies too costly for the event loop (CEL errors included) are evaluated on policy workers under
 * a time limit, with the same decisions and reasons as on the event loop. Workers load compiled files,
 * so the pool runs the built worker (dist/, as test/seal/node.test.ts does).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { PolicyPool } from '../../src/kbs/policy-pool.js';
import { runPolicy } from '../../src/kbs/policy-run.js';
import {
  compilePolicy,
  DEFAULT_RESOURCE_POLICY,
  evaluatesOnMainThread,
  type PolicyInput,
} from '../../src/policy/index.js';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { input, submod } from '../policy/helpers.js';
import { sampleAttester, testBroker } from './helpers.js';

const workerUrl = new URL('../../dist/kbs/policy-worker.js', import.meta.url);

/** Every item of a 4000-entry claim list fails 5 field accesses (test/policy/fuzz.slow.test.ts). */
const FIELDS = 'x.a == 1 || x.b == 1 || x.c == 1 || x.d == 1 || x.e == 1';
const HEAVY = `cpu.claims.l.all(x, ${FIELDS} || true)`;
const items = (v: unknown): PolicyInput =>
  input({ submods: { cpu0: submod({ claims: { l: Array(4000).fill(v), mr_td: 'aa' } }) } });

describe('where a policy is evaluated', () => {
  it('keeps the default and typical policies on the event loop, costly erroring ones off it', () => {
    for (const src of [
      DEFAULT_RESOURCE_POLICY,
      'tee == "tdx" && cpu.status == "affirming"',
      'cpu.claims.l.all(x, x.startsWith("ab"))',
      'cpu.claims.mr_td == "abc" && submods.all(n, submods[n].status == "affirming")',
    ]) {
      expect(evaluatesOnMainThread(compilePolicy(src)), src).toBe(true);
    }
    for (const src of [
      HEAVY,
      `cpu.claims.l.all(x, int(x) == 1 || ${FIELDS} || true)`,
      // 2560 errors, each after the library listed every key of a claim that is a map of 4000 keys to
      // learn its type: ≈ 75 ms (5 ms on a map of one key), which the errors alone put on the event loop.
      `[${Array(256).fill(0).join(',')}].all(x, ${Array(10).fill('cpu.claims.m < 1').join(' || ')} || true)`,
      // The TDX example of docs/policy.md: each typed comparison may fail on an item of another type.
      `tee == "tdx" && cpu.status == "affirming"
       && cpu.claims.rtmrs.all(r, r.size() == 96 && r != cpu.claims.mr_td)
       && cpu.claims.event_log.all(e, e.pcr_index > 1 || e.digest.lowerAscii() in ["9f86", "6030"])`,
    ]) {
      const p = compilePolicy(src);
      expect(p.cost, src).toBeLessThanOrEqual(1_000_000);
      expect(evaluatesOnMainThread(p), src).toBe(false);
    }
  });
});

describe('PolicyPool', () => {
  const pools: PolicyPool[] = [];
  const pool = (o: Partial<ConstructorParameters<typeof PolicyPool>[0]> = {}) => {
    const p = new PolicyPool({ timeLimitMs: 60_000, workerUrl, ...o });
    pools.push(p);
    return p;
  };
  afterAll(async () => {
    await Promise.all(pools.map((p) => p.close()));
  });

  it('gives the same decisions, reasons and clause outcomes as the event loop', async () => {
    const p = pool();
    const policies = [
      DEFAULT_RESOURCE_POLICY,
      HEAVY,
      `cpu.claims.l.all(x, ${FIELDS})`,
      `tenant == "acme" && cpu.claims.l.all(x, int(x) > 0) && cpu.claims.mr_td == "bb"`,
      `tee == "tdx"\n  && cpu.claims.l.exists(x, x.a == 1)\n  && timestamp(cpu.claims.mr_td) < now`,
      'cpu.claims.l.size() > 0',
    ];
    const inputs: unknown[] = [
      input(),
      items({}),
      items('not a map'),
      items(0),
      items({ a: 1 }),
      { submods: 'not submods' },
    ];
    for (const src of policies) {
      const policy = compilePolicy(src);
      for (const i of inputs) {
        for (const explainClauses of [false, true]) {
          const here = runPolicy(policy, i as PolicyInput, explainClauses);
          const there = await p.evaluate(src, i as PolicyInput, explainClauses);
          expect(JSON.stringify(there), src).toBe(JSON.stringify(here));
        }
      }
    }
    expect(p.stats.evaluated).toBe(policies.length * inputs.length * 2);
  });

  it('leaves the event loop free while a costly evaluation runs', async () => {
    const p = pool();
    await p.evaluate('true', input(), false); // the worker is started
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    try {
      // ≈ 20 000 CEL errors: tens of ms, which on the event loop would let no timer fire.
      const run = await p.evaluate(HEAVY, items('not a map'), false);
      expect(run.decision.allow).toBe(true);
      expect(ticks).toBeGreaterThan(0);
    } finally {
      clearInterval(timer);
    }
  });

  it('denies an evaluation over the time limit and replaces the worker', async () => {
    const p = pool({ timeLimitMs: 1 });
    const heavy = compilePolicy(HEAVY);
    const run = await p.evaluate(heavy.source, items({}), true);
    expect(run).toEqual({
      decision: {
        allow: false,
        reasons: ['policy evaluation exceeded its time limit of 1 ms'],
        publicMessage: 'denied by policy',
      },
    });
    expect(p.stats).toMatchObject({ started: 1, timedOut: 1 });
    // A fresh worker takes the next one (cut off again: the limit is 1 ms).
    const again = await p.evaluate(heavy.source, items({}), false);
    expect(again.decision.reasons).toEqual(['policy evaluation exceeded its time limit of 1 ms']);
    expect(p.stats).toMatchObject({ started: 2, timedOut: 2 });
  });

  it('denies evaluations beyond the queue bound instead of holding them', async () => {
    const p = pool({ workers: 1, maxQueued: 2 });
    // Each from another tenant, so that only the whole queue's bound applies.
    const runs = await Promise.all(
      Array.from({ length: 5 }, (_, i) => p.evaluate(HEAVY, items({}), false, `t${i}`)),
    );
    const refused = runs.filter((r) => /already waiting/.test(r.decision.reasons[0] ?? ''));
    expect(refused.length).toBe(3);
    expect(refused[0]!.decision).toEqual({
      allow: false,
      reasons: [
        'policy evaluation refused: 2 costly policy evaluations are already waiting for a policy worker ' +
          '(try again later)',
      ],
      publicMessage: 'denied by policy',
    });
    expect(p.stats).toMatchObject({ evaluated: 2, refusedQueueFull: 3 });
  });

  it("keeps one tenant's flood to a quarter of the queue, so another tenant still gets a place (review finding)", async () => {
    const p = pool({ workers: 1, maxQueued: 8 });
    const flood = Array.from({ length: 5 }, () => p.evaluate(HEAVY, items({}), false, 'acme'));
    const other = p.evaluate(HEAVY, items({}), false, 'bigcorp');
    const runs = await Promise.all(flood);
    const refused = runs.filter((r) =>
      /of this tenant are already waiting/.test(r.decision.reasons[0] ?? ''),
    );
    expect(refused).toHaveLength(3);
    expect(refused[0]!.decision.reasons[0]).toBe(
      'policy evaluation refused: 2 costly policy evaluations of this tenant are already waiting for a ' +
        'policy worker (try again later)',
    );
    expect((await other).decision.reasons.join()).not.toMatch(/already waiting/);
  });

  it('denies an input the worker cannot be sent, and keeps serving (review finding)', async () => {
    const p = pool();
    await p.evaluate('true', input(), false); // the worker is started and idle
    const bad = { ...input(), init_data: { f: () => 1 } } as unknown as PolicyInput;
    const run = await p.evaluate(HEAVY, bad, false);
    expect(run.decision.allow).toBe(false);
    expect(run.decision.reasons[0]).toMatch(
      /^policy evaluation failed: its input cannot be sent to a policy worker/,
    );
    expect((await p.evaluate('true', input(), false)).decision.allow).toBe(true);
  });

  it('denies when the worker cannot start, rather than evaluating on the event loop', async () => {
    const p = pool({ workerUrl: new URL('./no-such-policy-worker.js', import.meta.url) });
    const run = await p.evaluate(HEAVY, items({}), false);
    expect(run.decision.allow).toBe(false);
    expect(run.decision.reasons[0]).toMatch(/^policy evaluation failed: the policy worker failed: /);
  });
});

describe('a broker with a costly policy', () => {
  // The default policy plus a walk whose every item may fail: allowed for the sample TEE in dev mode.
  const COSTLY = `(${DEFAULT_RESOURCE_POLICY}) && (${HEAVY} || true)`;

  it('releases through a policy worker while /healthz keeps answering', async () => {
    const b = await testBroker({ devMode: true }, { policyWorkerUrl: workerUrl });
    try {
      const admin = await b.admin();
      expect(
        (await b.call('PUT', '/admin/v1/resources/acme/keys/k1', admin, new Uint8Array([1]))).status,
      ).toBe(201);
      expect(
        (await b.call('PUT', '/admin/v1/policies', admin, { scope: 'default', source: COSTLY })).status,
      ).toBe(200);
      const attester = await sampleAttester();
      const releases = Promise.all(
        Array.from({ length: 4 }, () => new KbsClient({ url: b.url, attester }).getResource('acme/keys/k1')),
      );
      const health: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        expect((await fetch(new URL('/healthz', b.url))).status).toBe(200);
        health.push(performance.now() - t);
      }
      for (const v of await releases) expect([...v]).toEqual([1]);
      expect(b.policyPool.stats.evaluated).toBeGreaterThanOrEqual(4);
      // Generous: only an event loop held for seconds would fail it.
      expect(Math.max(...health)).toBeLessThan(2_000);
    } finally {
      await b.close();
    }
  });

  it('denies with the time limit as the reason, in the log and in policy/evaluate', async () => {
    const b = await testBroker({ devMode: true, policyTimeLimitMs: 1 }, { policyWorkerUrl: workerUrl });
    try {
      const admin = await b.admin();
      await b.call('PUT', '/admin/v1/resources/acme/keys/k1', admin, new Uint8Array([1]));
      await b.call('PUT', '/admin/v1/policies', admin, { scope: 'default', source: COSTLY });
      const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
      await expect(client.getResource('acme/keys/k1')).rejects.toThrow(/denied by policy/);
      expect(b.lines.join('\n')).toMatch(/policy evaluation exceeded its time limit of 1 ms/);
      const token = await client.token();
      const ev = await b.call('POST', '/admin/v1/policy/evaluate', admin, {
        token,
        resource: 'acme/keys/k1',
      });
      expect(ev.status).toBe(200);
      expect(await ev.json()).toMatchObject({
        allow: false,
        reasons: ['policy evaluation exceeded its time limit of 1 ms'],
        policyScope: 'default',
        clauses: [],
      });
    } finally {
      await b.close();
    }
  });
});
