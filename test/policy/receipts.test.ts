/**
 * `receipts` in the policy input: typed like the rest (a misspelt field is refused at compile time),
 * absent means none, bad data is a denial with a reason, and the bounds hold.
 */
import { describe, expect, it } from 'vitest';
import {
  compilePolicy,
  evaluatePolicy,
  INPUT_LIMITS,
  PolicyError,
  type PolicyInput,
  type PolicyReceipt,
} from '../../src/policy/index.js';

const receipt = (o: Partial<PolicyReceipt> = {}): PolicyReceipt => ({
  job: 'a'.repeat(64),
  sha256: 'b'.repeat(64),
  trainer: { kind: 'builtin', name: 'llama', digest: 'sha256:1234' },
  outputs: [{ file: 'model.gguf.sealed', sha256: 'c'.repeat(64) }],
  tee: { kind: 'tdx', insecure: false, status: 'affirming', measurement: 'ab'.repeat(48) },
  recorded_at: new Date('2026-01-01T00:00:00Z'),
  ...o,
});

const input = (receipts?: unknown): PolicyInput =>
  ({
    submods: {},
    resource: { uri: 'kbs:///o/m/key', repository: 'o', type: 'm', tag: 'key' },
    tenant: '',
    now: new Date('2026-02-01T00:00:00Z'),
    dev_mode: false,
    ...(receipts !== undefined ? { receipts } : {}),
  }) as PolicyInput;

const APPROVED =
  'receipts.exists(r, r.trainer.digest == "sha256:1234" && !r.tee.insecure && r.tee.status == "affirming" && r.outputs.exists(o, o.file == "model.gguf.sealed") && r.recorded_at < now)';

describe('receipts in the policy input', () => {
  it('allows with a matching receipt, denies without one (absent is empty)', () => {
    const p = compilePolicy(APPROVED);
    expect(evaluatePolicy(p, input([receipt()])).allow).toBe(true);
    expect(evaluatePolicy(p, input([])).reasons[0]).toMatch(/^failed \(line 1:1\): receipts\.exists/);
    expect(evaluatePolicy(p, input()).allow).toBe(false);
    expect(
      evaluatePolicy(p, input([receipt({ trainer: { kind: 'builtin', name: '', digest: '' } })])).allow,
    ).toBe(false);
    // The sample TEE is insecure whatever the record says.
    expect(
      evaluatePolicy(
        p,
        input([receipt({ tee: { kind: 'sample', insecure: false, status: 'affirming', measurement: '' } })]),
      ).allow,
    ).toBe(false);
    expect(evaluatePolicy(compilePolicy('size(receipts) == 0'), input()).allow).toBe(true);
  });

  it("pins the trainer's image by the appending TEE's launch measurement ('' when unknown)", () => {
    const p = compilePolicy(`receipts.exists(r, r.tee.measurement == "${'ab'.repeat(48)}")`);
    expect(evaluatePolicy(p, input([receipt()])).allow).toBe(true);
    const other = (measurement: string) =>
      receipt({ tee: { kind: 'tdx', insecure: false, status: 'affirming', measurement } });
    expect(evaluatePolicy(p, input([other('cd'.repeat(48))])).allow).toBe(false);
    expect(evaluatePolicy(p, input([other('')])).allow).toBe(false);
    // A record without one (from before it was kept) reads as ''.
    const { measurement: _, ...old } = receipt().tee;
    expect(evaluatePolicy(p, input([{ ...receipt(), tee: old }])).allow).toBe(false);
    expect(
      evaluatePolicy(
        compilePolicy('receipts.all(r, r.tee.measurement == "")'),
        input([{ ...receipt(), tee: old }]),
      ).allow,
    ).toBe(true);
  });

  it('is typed: a misspelt field is refused when the policy is stored', () => {
    expect(() => compilePolicy('receipts.exists(r, r.trainer.digst == "x")')).toThrow(PolicyError);
    expect(() => compilePolicy('receipts.exists(r, r.tee.insecure == "no")')).toThrow(PolicyError);
    expect(() => compilePolicy('receipts.exists(r, r.tee.measurment == "")')).toThrow(PolicyError);
  });

  it('is cheap to walk', () => {
    expect(compilePolicy(APPROVED).cost).toBeLessThan(20_000);
    expect(compilePolicy(APPROVED).names.has('receipts')).toBe(true);
    expect(compilePolicy('dev_mode').names.has('receipts')).toBe(false);
  });

  it('denies bad receipt data with a reason, and more than the bounds allow', () => {
    const p = compilePolicy(APPROVED);
    const denied = (receipts: unknown, reason: RegExp) =>
      expect(evaluatePolicy(p, input(receipts)).reasons.join('\n')).toMatch(reason);
    denied('x', /receipts must be a list/);
    denied([{ ...receipt(), trainer: { kind: 3 } }], /receipts\[0\]\.trainer\.kind must be a string/);
    denied([{ ...receipt(), recorded_at: 'yesterday' }], /recorded_at must be a valid Date/);
    denied([receipt({ job: 'x'.repeat(INPUT_LIMITS.maxReceiptString + 1) })], /job is longer than/);
    denied(
      Array.from({ length: INPUT_LIMITS.maxReceipts + 1 }, () => receipt()),
      /more than 16 receipts/,
    );
    denied(
      [
        receipt({
          outputs: Array.from({ length: INPUT_LIMITS.maxReceiptOutputs + 1 }, () => receipt().outputs[0]!),
        }),
      ],
      /more than 16 outputs/,
    );
  });
});
