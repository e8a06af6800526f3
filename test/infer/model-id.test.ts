import { describe, expect, it } from 'vitest';
import { modelIdOf } from '../../src/infer/load.js';
import type { Header } from '../../src/seal/index.js';

/** docs/confidential-inference.md, "Model ids": the id is the sealed name without its model extension. */
describe('modelIdOf', () => {
  const header = (name: string) => ({ name }) as Header;

  it('is the name sealed in the header without .gguf, .tar or .onnx', () => {
    expect(modelIdOf(header('llama-3.2-1b-q4.gguf'), 'llama.gguf.sealed')).toBe('llama-3.2-1b-q4');
    expect(modelIdOf(header('minilm.TAR'), 'x.sealed')).toBe('minilm');
    expect(modelIdOf(header('model.onnx'), 'x.sealed')).toBe('model');
    expect(modelIdOf(header('llama'), 'other.gguf.sealed')).toBe('llama');
    expect(modelIdOf(header('weights.bin'), 'x.sealed')).toBe('weights.bin');
  });

  it('without a sealed name (sealed from stdin): the sealed file name without .sealed and the extension', () => {
    expect(modelIdOf(header(''), '/models/llama.gguf.sealed')).toBe('llama');
    expect(modelIdOf(header(''), '.gguf.sealed')).toBe('model');
  });
});
