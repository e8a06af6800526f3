/**
 * Every refusal of the transparency-log library is a TranslogError with a stable `code` (what tests and
 * callers match on) and a message an operator can act on. `entry` / `checkpoint` say where in a log or
 * bundle the problem is, when it is tied to one place.
 */
export type TranslogErrorCode =
  | 'bad-entry' // an entry is malformed (fields, types, time, hex)
  | 'index-gap' // an entry's index is not the one after its predecessor's (deleted, reordered, duplicated)
  | 'chain-broken' // an entry's prevHash is not its predecessor's leaf hash (edited, reordered, inserted)
  | 'bad-range' // a serialised compact range or log head is malformed
  | 'bad-proof' // a proof is malformed or asked for impossible sizes
  | 'bad-inclusion-proof' // an inclusion proof does not lead to the expected root
  | 'bad-consistency-proof' // a consistency proof does not join the two roots
  | 'bad-note' // a signed note is malformed
  | 'bad-key' // a verifier key or signer key is malformed
  | 'unknown-key' // no signature on a note comes from the trusted key
  | 'bad-signature' // a signature from the trusted key does not verify
  | 'bad-checkpoint' // a checkpoint body is malformed or names another origin
  | 'root-mismatch' // a checkpoint's root differs from the root recomputed from the entries
  | 'checkpoint-beyond-entries' // a checkpoint commits to more entries than the bundle holds
  | 'checkpoint-not-covered' // a checkpoint lies before the bundle's entries and no proof ties it in
  | 'inconsistent-checkpoints' // two signed checkpoints cannot both be true of one append-only log
  | 'no-checkpoint' // a bundle has no checkpoint signed by the trusted key
  | 'unsigned-entries' // a bundle has entries after its last signed checkpoint
  | 'proof-without-checkpoint' // a proof in a bundle names a tree size no verified checkpoint has
  | 'bad-bundle' // the bundle file itself is malformed
  | 'store'; // a LogStore broke its contract (missing or short data)

export interface TranslogErrorWhere {
  /** Log index of the entry concerned. */
  entry?: number;
  /** Tree size of the checkpoint concerned. */
  checkpoint?: number;
  /** 1-based line of a bundle. */
  line?: number;
}

export class TranslogError extends Error {
  override readonly name = 'TranslogError';
  constructor(
    readonly code: TranslogErrorCode,
    message: string,
    readonly where: TranslogErrorWhere = {},
  ) {
    super(message);
  }

  toJSON(): { code: TranslogErrorCode; message: string } & TranslogErrorWhere {
    return { code: this.code, message: this.message, ...this.where };
  }
}
