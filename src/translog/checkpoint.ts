/**
 * C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint): a signed note whose text is the log's origin, its tree
 * size and its root hash, one per line, optionally followed by extension lines.
 *
 *   broker.example/log
 *   1234
 *   <base64 root>
 *
 *   — broker.example/log <base64(key id ‖ Ed25519 signature)>
 */
import { TranslogError } from './errors.js';
import {
  type NoteSigner,
  type NoteVerifier,
  parseNote,
  parseVerifierKey,
  signNote,
  toBase64,
  verifyNote,
} from './note.js';

export interface Checkpoint {
  origin: string;
  size: number;
  /** 32-byte RFC 6962 root hash. */
  root: Uint8Array;
  /** Extension lines (not recommended, kept as read). */
  extensions?: string[];
}

/** The note text of a checkpoint. */
export function checkpointText(c: Checkpoint): string {
  if (c.origin.length === 0 || c.origin.includes('\n')) {
    throw new TranslogError('bad-checkpoint', 'a checkpoint origin is one non-empty line');
  }
  if (!Number.isSafeInteger(c.size) || c.size < 0) throw new TranslogError('bad-checkpoint', 'bad tree size');
  if (c.root.length !== 32) throw new TranslogError('bad-checkpoint', 'a checkpoint root has 32 bytes');
  const ext = c.extensions ?? [];
  if (ext.some((l) => l.length === 0 || l.includes('\n'))) {
    throw new TranslogError('bad-checkpoint', 'extension lines are single non-empty lines');
  }
  return [c.origin, String(c.size), toBase64(c.root), ...ext].map((l) => `${l}\n`).join('');
}

/** Reads a checkpoint body (the note text), checking its syntax. */
export function parseCheckpointText(text: string): Checkpoint {
  if (!text.endsWith('\n'))
    throw new TranslogError('bad-checkpoint', 'a checkpoint text ends with a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3)
    throw new TranslogError('bad-checkpoint', 'a checkpoint has origin, size and root lines');
  const [origin, size, root, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin.length === 0) throw new TranslogError('bad-checkpoint', 'the checkpoint origin is empty');
  if (!/^(0|[1-9][0-9]*)$/.test(size) || !Number.isSafeInteger(Number(size))) {
    throw new TranslogError(
      'bad-checkpoint',
      `checkpoint size ${JSON.stringify(size)} is not a decimal size`,
    );
  }
  if (root.length !== 44 || !/^[A-Za-z0-9+/]{43}=$/.test(root)) {
    throw new TranslogError('bad-checkpoint', 'the checkpoint root is not the base64 of 32 bytes');
  }
  if (extensions.some((l) => l.length === 0)) {
    throw new TranslogError('bad-checkpoint', 'checkpoint extension lines must not be empty');
  }
  const rootBytes = Uint8Array.from(atob(root), (c) => c.charCodeAt(0));
  return { origin, size: Number(size), root: rootBytes, ...(extensions.length ? { extensions } : {}) };
}

/** Signs a checkpoint; returns the signed note. */
export function signCheckpoint(c: Checkpoint, signers: NoteSigner | readonly NoteSigner[]): Promise<string> {
  return signNote(checkpointText(c), Array.isArray(signers) ? signers : [signers as NoteSigner]);
}

/**
 * Parses a signed checkpoint WITHOUT verifying it: for display and for picking the key to verify with.
 * Nothing it says may be trusted until `verifyCheckpoint` has accepted it.
 */
export function parseCheckpoint(note: string | Uint8Array): Checkpoint {
  return parseCheckpointText(parseNote(note).text);
}

export interface VerifyCheckpointOptions {
  /** The origin the checkpoint must name (default: the verifier key's name, as C2SP recommends). */
  origin?: string;
}

/**
 * Verifies a signed checkpoint with a trusted key (a vkey string or a parsed verifier) and returns its
 * contents. The origin must be the expected one, so that a checkpoint of another log signed by the
 * same key cannot be passed off as one of this log.
 */
export async function verifyCheckpoint(
  note: string | Uint8Array,
  key: string | NoteVerifier | readonly NoteVerifier[],
  options: VerifyCheckpointOptions = {},
): Promise<Checkpoint> {
  const verifiers =
    typeof key === 'string'
      ? [await parseVerifierKey(key)]
      : Array.isArray(key)
        ? key
        : [key as NoteVerifier];
  const { text, signedBy } = await verifyNote(note, verifiers);
  const c = parseCheckpointText(text);
  const expected = options.origin ?? (signedBy.length === 1 ? signedBy[0] : undefined);
  if (expected !== undefined && c.origin !== expected) {
    throw new TranslogError(
      'bad-checkpoint',
      `the checkpoint is of log ${JSON.stringify(c.origin)}, not ${JSON.stringify(expected)}`,
      {
        checkpoint: c.size,
      },
    );
  }
  return c;
}
