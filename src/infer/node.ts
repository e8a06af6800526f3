/**
 * Confidential inference, Node-only parts: the composition root (`startInference`), model loading and
 * the serving keys replicas share. The web-standard parts are in index.ts (`cloister/infer`).
 */
export type { InferenceOptions } from './app.js';
export { startInference } from './app.js';
export { modelIdOf } from './load.js';
export { encodeServingKeys, generateServingKeys } from './serving-keys.js';
