/** ClientPolicy.adapters: what a pin on LoRA adapters accepts and refuses. */
import { describe, expect, it } from 'vitest';
import { PolicyFileError, parseAdapterPin, parseClientPolicy } from '../../src/client/policy.js';
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

  it('pins the scale: none means 1, @scale that scale, compared as float32', () => {
    const at = (scale: number): ModelIdentity => ({ ...model(), adapters: [{ digest: A, scale }] });
    expect(adapterRefusal(at(1), policy({ adapters: [A] }))).toBeUndefined();
    expect(adapterRefusal(at(1), policy({ adapters: [`${A}@1.0`] }))).toBeUndefined();
    expect(adapterRefusal(at(0.8), policy({ adapters: [`${A}@0.8`] }))).toBeUndefined();
    expect(adapterRefusal(at(0.5), policy({ adapters: [`${A}@5e-1`] }))).toBeUndefined();
    // The same float32 (what llama.cpp is handed) is the same scale.
    expect(adapterRefusal(at(Math.fround(0.8)), policy({ adapters: [`${A}@0.8`] }))).toBeUndefined();
    expect(adapterRefusal(at(0.8), policy({ adapters: [A] }))).toBe(
      `the model 'tuned' carries LoRA adapter(s) ${A} (scale 0.8); the policy wants exactly ${A} (scale 1)`,
    );
    expect(adapterRefusal(at(1), policy({ adapters: [`${A}@0.8`] }))).toMatch(
      /wants exactly .* \(scale 0\.8\)/,
    );
    expect(adapterRefusal(at(2), policy({ adapters: [`${A}@0.8`] }))).toMatch(/wants exactly/);
    const two: ModelIdentity = {
      ...model(),
      adapters: [
        { digest: A, scale: 0.5 },
        { digest: C, scale: 2 },
      ],
    };
    expect(adapterRefusal(two, policy({ adapters: [`${C}@2`, `${A}@0.5`] }))).toBeUndefined();
    expect(adapterRefusal(two, policy({ adapters: [`${C}@0.5`, `${A}@2`] }))).toMatch(/wants exactly/);
  });

  it('refuses adapters that are not sha256 digests, or a scale out of range', () => {
    expect(() => policy({ adapters: ['abc'] })).toThrow(PolicyFileError);
    expect(() => policy({ adapters: [A.toUpperCase()] })).toThrow(/not sha256:<64 lowercase hex>/);
    expect(() => policy({ adapters: 'sha256:x' })).toThrow(/adapters must be a list of strings/);
    for (const bad of ['@', '@-1', '@abc', '@0x10', '@1,5', '@ 1', '@Infinity', '@NaN', '@1@2'])
      expect(() => policy({ adapters: [`${A}${bad}`] }), bad).toThrow(
        /is not sha256:<64 lowercase hex> or sha256:<64 lowercase hex>@<scale>/,
      );
    for (const bad of ['0', '1e-300', '1e300', '0.0009', '1000.5'])
      expect(() => policy({ adapters: [`${A}@${bad}`] }), bad).toThrow(
        `adapters: "${A}@${bad}" has scale ${bad}; a scale is a number from 0.001 to 1000`,
      );
    expect(parseAdapterPin(`${A}@1000`)).toEqual({ digest: A, scale: 1000 });
    expect(parseAdapterPin(`${A}@.001`)).toEqual({ digest: A, scale: 0.001 });
  });
});
