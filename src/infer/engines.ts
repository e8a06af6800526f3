/**
 * The real engines behind `cloister serve` (Node-only), loaded on first use so that a server with
 * only GGUF models never loads ONNX Runtime and the other way round.
 */
import type { EngineLoaders } from './load.js';

export interface EngineSettings {
  gpu: 'auto' | false;
  /** Concurrent generations per model. */
  parallel: number;
  /** Tokens per sequence; default the model's own, capped by the engine. */
  contextSize?: number;
  /** CPU threads per evaluation; default every core (right for a dedicated TEE VM). */
  threads?: number;
  log?: (line: string) => void;
}

export function realEngines(s: EngineSettings): EngineLoaders {
  return {
    async gguf(path, adapters) {
      const { loadLlamaEngine } = await import('./engine/llama.js');
      return loadLlamaEngine({
        path,
        ...(adapters && adapters.length > 0 ? { adapters } : {}),
        gpu: s.gpu,
        parallel: s.parallel,
        ...(s.contextSize ? { contextSize: s.contextSize } : {}),
        ...(s.threads ? { threads: s.threads } : {}),
        ...(s.log
          ? { log: (level: string, message: string) => s.log?.(`llama.cpp ${level}: ${message}`) }
          : {}),
      });
    },
    async warmUp(format) {
      if (format === 'gguf') await (await import('./engine/llama.js')).warmUpLlama(s.gpu);
      else await import('./engine/onnx.js');
    },
    async onnxBundle(bundle) {
      const { loadOnnxEngine } = await import('./engine/onnx.js');
      return loadOnnxEngine({ bundle, parallel: s.parallel, ...(s.threads ? { threads: s.threads } : {}) });
    },
  };
}
