/**
 * `cloister model`: small models made by Cloister's own code, with random weights, for tests, demos
 * and benchmarks where nothing can be downloaded: a llama-architecture GGUF (any size) and an ONNX
 * embedding model bundle (a tar with its tokenizer). They produce noise, not language.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { integerOption } from './numbers.js';

export function registerModel(program: Command): void {
  const model = program
    .command('model')
    .description('generate small random-weight models (tests, demos, benchmarks)');
  model
    .command('tiny-gguf')
    .description('write a llama-architecture GGUF with random weights')
    .argument('<out>', 'output file, e.g. tiny.gguf')
    .option('--bytes <n>', 'make the file at least this large (e.g. 1073741824 for a 1 GiB model)')
    .option('--seed <n>', 'weights are a function of the seed', '1')
    .addHelpText(
      'after',
      '\nExample:\n  cloister model tiny-gguf tiny.gguf && cloister seal tiny.gguf tiny.gguf.sealed --to kbs:///acme/models/kek=kek.jwk',
    )
    .exitOverride()
    .action(async (out: string, o: { bytes?: string; seed: string }) => {
      const { writeTinyLlamaGguf } = await import('../infer/testing/index.js');
      const started = performance.now();
      const m = await writeTinyLlamaGguf(out, {
        seed: integerOption(o.seed, '--seed', 0),
        ...(o.bytes ? { targetBytes: integerOption(o.bytes, '--bytes', 1) } : {}),
      });
      process.stderr.write(
        `wrote ${out}: ${m.size} bytes, ${m.shape.layers} layers, embedding ${m.shape.embedding}, in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
      );
    });
  model
    .command('tiny-onnx')
    .description(
      'write an ONNX embedding model bundle (tar: model.onnx, tokenizer.json, tokenizer_config.json)',
    )
    .argument('<out>', 'output file, e.g. tiny-embed.tar')
    .option('--seed <n>', 'weights are a function of the seed', '1')
    .option('--dimensions <n>', 'embedding size', '32')
    .addHelpText(
      'after',
      '\nExample:\n  cloister model tiny-onnx tiny-embed.tar && cloister seal tiny-embed.tar tiny-embed.tar.sealed --to kbs:///acme/models/kek=kek.jwk',
    )
    .exitOverride()
    .action(async (out: string, o: { seed: string; dimensions: string }) => {
      const { tinyOnnxEmbeddingBundle } = await import('../infer/testing/index.js');
      const bundle = tinyOnnxEmbeddingBundle({
        seed: integerOption(o.seed, '--seed', 0),
        dimensions: integerOption(o.dimensions, '--dimensions', 1),
      });
      await writeFile(out, bundle);
      process.stderr.write(`wrote ${out}: ${bundle.length} bytes\n`);
    });
}
