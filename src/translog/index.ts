/**
 * The key broker's transparency log: hash-chained entries in an RFC 6962 Merkle tree with C2SP signed
 * checkpoints, storage-independent (a writer appends with `prepareAppend` inside its own transaction; a
 * reader serves proofs from any `LogStore`), and an export bundle anyone can verify offline.
 */
export * from './bundle.js';
export * from './checkpoint.js';
export * from './entry.js';
export * from './errors.js';
export * from './hash.js';
export * from './merkle.js';
export * from './note.js';
export * from './store.js';
