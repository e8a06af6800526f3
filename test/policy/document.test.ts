import { describe, expect, it } from 'vitest';
import {
  celValue,
  compileDocumentPolicy,
  evaluateDocumentPolicy,
  PolicyError,
} from '../../src/policy/index.js';

const VARS = { doc: 'map<string, dyn>', ear: 'dyn', now: 'google.protobuf.Timestamp' };
const doc = {
  name: 'tiny-lm',
  seed: 42,
  outputs: [{ file: 'm.sealed', recipients: ['kbs:///o/m/k'] }],
  loss: 2.5,
};

describe('CEL over JSON documents', () => {
  it('allows when the expression is exactly true; JSON numbers compare with int and double literals', () => {
    const p = compileDocumentPolicy(
      'doc.name == "tiny-lm" && doc.seed == 42 && doc.loss < 3.0 && ear == null &&\n' +
        'doc.outputs.all(o, o.recipients.exists(r, r.startsWith("kbs:///"))) && now > timestamp("2020-01-01T00:00:00Z")',
      VARS,
    );
    expect(evaluateDocumentPolicy(p, { doc, ear: null, now: new Date() })).toEqual({
      allow: true,
      reasons: [],
    });
  });

  it('names each failing clause with its line and column, and evaluation errors', () => {
    const p = compileDocumentPolicy('doc.seed == 42 &&\n  doc.name == "other" &&\n  doc.missing == 1', VARS);
    const d = evaluateDocumentPolicy(p, { doc, ear: null, now: new Date() });
    expect(d.allow).toBe(false);
    expect(d.reasons[0]).toBe('failed (line 2:3): doc.name == "other"');
    expect(d.reasons[1]).toMatch(/^error \(line 3:3\): doc\.missing == 1: /);
  });

  it('does not see prototype members and refuses non-JSON values', () => {
    const p = compileDocumentPolicy('has(doc.constructor) || "toString" in doc', VARS);
    expect(evaluateDocumentPolicy(p, { doc, ear: null, now: new Date() }).allow).toBe(false);
    expect(() => celValue({ f: () => 1 })).toThrow(/not JSON/);
    expect(() => celValue({ x: Number.NaN })).toThrow(/not finite/);
    const bad = evaluateDocumentPolicy(compileDocumentPolicy('true', VARS), {
      doc: { n: Number.POSITIVE_INFINITY },
    });
    expect(bad).toMatchObject({ allow: false, reasons: [expect.stringMatching(/^invalid document/)] });
  });

  it('refuses what resource policies refuse: syntax, non-bool, forbidden functions, unknown variables', () => {
    const cases: [string, string][] = [
      ['doc.seed ==', 'policy-syntax'],
      ['size(doc.name)', 'policy-not-bool'],
      ['doc.name.matches("a+")', 'policy-forbidden'],
      ['cpu.status == "affirming"', 'policy-type'],
      ['  ', 'policy-empty'],
    ];
    for (const [src, code] of cases) {
      let err: unknown;
      try {
        compileDocumentPolicy(src, VARS);
      } catch (e) {
        err = e;
      }
      expect(err, src).toBeInstanceOf(PolicyError);
      expect((err as PolicyError).code, src).toBe(code);
    }
  });
});
