/**
 * Worker thread of CheckpointStore.save (checkpoint.ts) for large states: the SHA-256 of a sealed
 * checkpoint, computed while it is being sealed and written. SHA-256 is one sequential pass that
 * cannot be split, and on the sealing thread it costs more than the cipher; here it runs beside them.
 * The sealed batches lie in shared memory, a ring of slots the sealing thread fills; this thread
 * hashes the pieces in the order it is told and hands each slot back. It serves one save after
 * another (`begin` starts each), so that large checkpoints, which recur, do not each start a thread.
 */
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

export type HashRequest =
  /** A new hash (a worker serves one save after another). */
  | { begin: true }
  /** The ring of this save, before any slot is named. */
  | { ring: SharedArrayBuffer; slotBytes: number }
  /** The next piece: `length` bytes at the start of slot `slot`; answered `{slot}` once hashed. */
  | { slot: number; length: number }
  /** The next piece, carried in the message (the sealed header). */
  | { bytes: Uint8Array }
  /** The end: answered `{digest}` (hex). */
  | { end: true };

export type HashReply = { slot: number } | { digest: string };

const port = parentPort;
if (!port) throw new Error('hash-worker.js runs as a worker thread only');
let hash = createHash('sha256');
let ring: SharedArrayBuffer | undefined;
let slotBytes = 0;
port.on('message', (m: HashRequest) => {
  if ('begin' in m) {
    hash = createHash('sha256');
  } else if ('ring' in m) {
    ring = m.ring;
    slotBytes = m.slotBytes;
  } else if ('bytes' in m) {
    hash.update(m.bytes);
  } else if ('slot' in m) {
    hash.update(new Uint8Array(ring!, m.slot * slotBytes, m.length));
    port.postMessage({ slot: m.slot } satisfies HashReply);
  } else {
    port.postMessage({ digest: hash.digest('hex') } satisfies HashReply);
  }
});
