/**
 * The built-in "lora-convert" trainer: a job of zero steps that turns a PEFT LoRA adapter (inputs
 * "adapter" = adapter_model.safetensors and "config" = adapter_config.json) into a GGUF LoRA adapter
 * for the job's base. Running it as a training job means the conversion happens in the TEE like
 * any other: inputs and base unsealed there, the adapter sealed to the job's recipients, a receipt
 * naming the base, the inputs and the adapter. Node-only (reads the unsealed files).
 */
import { open, readFile } from 'node:fs/promises';
import {
  GgufError,
  type GgufInfo,
  type LoraAdapter,
  readGgufInfo,
  writeLoraAdapter,
} from '../../wire/index.js';
import type { BuiltinTrainer, ModelFile, StepReport, TrainerInput } from '../trainer.js';
import { LoraError } from './errors.js';
import { peftToLoraAdapter } from './peft.js';

const NAME = 'lora-convert';
/** The whole state of a job of zero steps: saved and restored only so the interface holds. */
const STATE = new TextEncoder().encode(JSON.stringify({ trainer: NAME, steps: 0 }));

export async function createLoraConverter(input: TrainerInput): Promise<BuiltinTrainer> {
  const extra = Object.keys(input.hyperparameters)[0];
  if (extra !== undefined)
    throw new LoraError(
      'bad-hyperparameter',
      `hyperparameters.${extra} is not known: lora-convert takes none`,
    );
  const named = new Map(input.inputs.map((i) => [i.name, i.path]));
  for (const name of named.keys()) {
    if (name !== 'adapter' && name !== 'config')
      throw new LoraError(
        'bad-input',
        `input "${name}" is not one lora-convert reads (it reads "adapter" and "config")`,
      );
  }
  const adapterPath = named.get('adapter');
  const configPath = named.get('config');
  if (!adapterPath)
    throw new LoraError(
      'bad-input',
      'lora-convert needs an input named "adapter" (adapter_model.safetensors)',
    );
  if (!configPath)
    throw new LoraError('bad-input', 'lora-convert needs an input named "config" (adapter_config.json)');
  if (!input.base)
    throw new LoraError('bad-model', 'lora-convert needs the base model (GGUF) the adapter was trained on');
  const info = await readBaseHeader(input.base.path);
  const adapter = peftToLoraAdapter(await readFile(adapterPath), await readFile(configPath), { info });
  return new LoraConverter(adapter);
}

class LoraConverter implements BuiltinTrainer {
  readonly name = NAME;
  readonly totalSteps = 0;
  readonly completedSteps = 0;

  constructor(private adapter: LoraAdapter) {}

  step(): Promise<StepReport> {
    return Promise.reject(new LoraError('bad-hyperparameter', 'lora-convert has no training steps'));
  }

  async evaluate(): Promise<Record<string, number>> {
    const pairs = this.adapter.pairs;
    return {
      lora_pairs: pairs.length,
      lora_parameters: pairs.reduce((n, p) => n + p.a.length + p.b.length, 0),
    };
  }

  saveState(): Uint8Array {
    return STATE.slice();
  }

  loadState(state: Uint8Array): void {
    if (state.length !== STATE.length || state.some((b, i) => b !== STATE[i]))
      throw new LoraError('checkpoint-state', 'the saved state is not a lora-convert state');
  }

  async exportModel(): Promise<ModelFile[]> {
    const bytes = writeLoraAdapter(this.adapter, {
      metadata: [['cloister.lora.source', { type: 'string', value: 'peft' }]],
    });
    return [{ name: 'adapter.gguf', bytes }];
  }

  dispose(): void {
    // Nothing is held outside the JavaScript heap (no engine, no worker).
  }
}

/** The base's GGUF header only (1 MiB first, more while the header runs on): its values are not needed. */
async function readBaseHeader(path: string): Promise<GgufInfo> {
  const file = await open(path, 'r');
  try {
    const size = (await file.stat()).size;
    for (let want = 1 << 20; ; want *= 4) {
      const buf = new Uint8Array(Math.min(want, size));
      const { bytesRead } = await file.read(buf, 0, buf.length, 0);
      try {
        return readGgufInfo(buf.subarray(0, bytesRead), size);
      } catch (e) {
        if (e instanceof GgufError && e.reason === 'need-more' && bytesRead < size) continue;
        if (e instanceof GgufError)
          throw new LoraError('bad-model', `the base model is not a readable GGUF file: ${e.message}`);
        throw e;
      }
    }
  } finally {
    await file.close();
  }
}
