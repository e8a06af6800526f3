/** Tiny models made on the spot for tests, the demo and benchmarks: nothing is ever downloaded. */
export { writeTinyLlamaGguf } from './gguf-node.js';
export { tinyOnnxEmbeddingBundle } from './onnx.js';
