/** ClientPolicy.adapters: what a pin on LoRA adapters accepts and refuses. */
import { describe, expect, it } from 'vitest';
import { PolicyFileError, parseClientPolicy } from '../../src/client/policy.js';
import { adapterRefusal } from '../../src/client/verify.js';
import type { ModelIdentity } from '../../src/wire/index.js';

const BASE = `sha256:${'b'.repeat(64)}`;
const A = `sha256:${'a'.repeat(64)}`;
const C = `sha256:${'c'.repeat(64)}`;
const model = (adapters?: string[]): ModelIdentity => ({
  id: 'tuned',
  digest: BASE,
  format: 'gguf',
  ...(adapters ? { adapters: adapters.map((digest) => ({ digest, scale: 1 })) } : {}),
});
const policy = (p: object) => parseClientPolicy({ tees: ['sample'], minStatus: 'warning', ...p });

describe('adapters in a client policy', () => {
  it('not pinned: any model accepts adapters; a pinned base refuses them', () => {
    expect(adapterRefusal(model([A]), policy({}))).toBeUndefined();
    expect(adapterRefusal(model(), policy({ models: [BASE] }))).toBeUndefined();
    expect(adapterRefusal(model([A]), policy({ models: [BASE] }))).toMatch(
      /carries LoRA adapter\(s\) sha256:a+ \(scale 1\), which the policy does not name/,
    );
  });

  it('pinned: exactly these, in any order; [] is the bare base', () => {
    expect(adapterRefusal(model([A, C]), policy({ adapters: [C, A] }))).toBeUndefined();
    expect(adapterRefusal(model([A]), policy({ adapters: [A, C] }))).toMatch(/wants exactly/);
    expect(adapterRefusal(model([A, C]), policy({ adapters: [A] }))).toMatch(/wants exactly/);
    expect(adapterRefusal(model(), policy({ adapters: [A] }))).toMatch(/carries no LoRA adapter/);
    expect(adapterRefusal(model(), policy({ adapters: [] }))).toBeUndefined();
    expect(adapterRefusal(model([A]), policy({ adapters: [] }))).toMatch(/the policy wants none/);
    expect(adapterRefusal(model([A, A]), policy({ adapters: [A] }))).toMatch(/wants exactly/);
  });

  it('refuses adapters that are not sha256 digests', () => {
    expect(() => policy({ adapters: ['abc'] })).toThrow(PolicyFileError);
    expect(() => policy({ adapters: [A.toUpperCase()] })).toThrow(/not sha256:<64 lowercase hex>/);
    expect(() => policy({ adapters: 'sha256:x' })).toThrow(/adapters must be a list of strings/);
  });
});
