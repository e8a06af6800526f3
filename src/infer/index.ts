/**
 * Confidential inference, web-standard parts (`cloister/infer`): the OpenAI-compatible handler, the
 * Oblivious HTTP gateway in front of it, the attested identity, per-response receipts and the serving
 * keys replicas share. The Node server (server.ts), the engines (engine/), model loading (load.ts) and
 * the Redis replay guard (replay-redis.ts) sit at the edges.
 */

export * from '../wire/inference-identity.js';
export * from '../wire/inference-receipt.js';
export * from './engine/types.js';
export * from './errors.js';
export * from './gateway.js';
export * from './openai.js';
export * from './queue.js';
export * from './serving-keys.js';
