/** End-to-end encryption for confidential inference: Binary HTTP, Oblivious HTTP, chunked responses. */
export * from './backend.js';
export * from './bhttp.js';
export * from './bhttp-stream.js';
export * from './chunked.js';
export * from './errors.js';
export * from './keyconfig.js';
export * from './ohttp.js';
export * from './replay.js';
export { encodeVarint, VarReader } from './varint.js';
