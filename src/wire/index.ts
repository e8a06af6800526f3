/**
 * What crosses the wire between Cloister's parts (web-standard): the KBS protocol's messages and the
 * evidence binding, RFC 7807 problem documents, the DSSE envelope and in-toto Statement that every
 * receipt kind shares, the inference server's attested identity and its per-response receipts, the
 * GGUF model header that serving checks and trainers read, GGUF writing and LoRA adapters. Both
 * ends import these from here, so the two sides cannot drift apart.
 */
export * from './dsse.js';
export * from './gguf.js';
export * from './gguf-tensors.js';
export * from './inference-identity.js';
export * from './inference-receipt.js';
export * from './kbs.js';
export * from './lora-adapter.js';
export * from './problem.js';
export * from './signing-key.js';
