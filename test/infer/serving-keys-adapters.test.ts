/** Shared serving keys scoped to a model with LoRA adapters: a replica with other adapters refuses them. */
import { describe, expect, it } from 'vitest';
import {
  checkServedModels,
  decodeServingKeys,
  encodeServingKeys,
  generateServingKeys,
} from '../../src/infer/serving-keys.js';
import { utf8 } from '../../src/util/bytes.js';

const BASE = `sha256:${'b'.repeat(64)}`;
const A = `sha256:${'a'.repeat(64)}`;
const C = `sha256:${'c'.repeat(64)}`;
const SOURCE = 'kbs:///acme/serving/keys';

describe('serving keys and adapters', () => {
  it('the scope names the adapters; other adapters, scales or none do not start a server', async () => {
    const models = [{ id: 'tuned', digest: BASE, adapters: [{ digest: A, scale: 0.5 }] }];
    const doc = await encodeServingKeys(await generateServingKeys({ exportable: true }), {
      models,
      plaintextAllowed: false,
    });
    const keys = await decodeServingKeys(doc, SOURCE);
    expect(keys.models).toEqual(models);
    expect(() => checkServedModels(keys, models, false)).not.toThrow();
    for (const served of [
      [{ id: 'tuned', digest: BASE }],
      [{ id: 'tuned', digest: BASE, adapters: [{ digest: C, scale: 0.5 }] }],
      [{ id: 'tuned', digest: BASE, adapters: [{ digest: A, scale: 1 }] }],
    ])
      expect(() => checkServedModels(keys, served, false)).toThrow(
        /are for tuned sha256:b+ \+ adapter sha256:a+ scale 0\.5; this server loaded/,
      );
  });

  it('refuses a malformed adapter entry with the reason', async () => {
    const doc = JSON.parse(
      utf8.decode(
        await encodeServingKeys(await generateServingKeys({ exportable: true }), {
          models: [{ id: 'tuned', digest: BASE }],
          plaintextAllowed: false,
        }),
      ),
    );
    doc.models[0].adapters = [{ digest: A, scale: 0 }];
    await expect(decodeServingKeys(utf8.encode(JSON.stringify(doc)), SOURCE)).rejects.toThrow(
      /models\[0\]\.adapters\[0\] must be/,
    );
  });
});
