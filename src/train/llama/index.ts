/** The built-in llama trainer's door: the factory, its errors, the GGUF reader/writer and the tokenizer. */
export { LlamaError, type LlamaErrorCode } from './errors.js';
export { type LlamaModel, readLlamaGguf, type WriteOptions, writeLlamaGguf } from './gguf.js';
export { type LlamaHyperparameters, type LrSchedule, parseHyperparameters } from './hyperparameters.js';
export type { LlamaShape } from './model.js';
export { decode, encode, encodeCorpus, VOCAB, VOCAB_SIZE } from './tokenizer.js';
export { createLlamaTrainer, type LlamaTrainer } from './trainer.js';
