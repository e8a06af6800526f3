/** Node edge of the GGUF reader: read a model file's header. */

import { open } from 'node:fs/promises';
import { GgufError, type GgufInfo, readGgufInfo } from '../../wire/index.js';

/** A header bigger than this is refused rather than read: real models' headers are a few MiB. */
const MAX_HEADER_BYTES = 512 << 20;

/**
 * `readGgufInfo` on a file, reading only as much of its head as the header needs (1 MiB first,
 * doubling). Throws `GgufError` for a bad file and the usual Node errors (ENOENT …) for a missing one.
 */
export async function readGgufInfoFromFile(path: string): Promise<GgufInfo> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    for (let want = 1 << 20; ; want *= 2) {
      const n = Math.min(want, size);
      const buf = new Uint8Array(n);
      const { bytesRead } = await fh.read(buf, 0, n, 0);
      try {
        return readGgufInfo(buf.subarray(0, bytesRead), size);
      } catch (err) {
        if (!(err instanceof GgufError && err.reason === 'need-more')) throw err;
        if (n >= MAX_HEADER_BYTES) {
          throw new GgufError('unsupported', `GGUF header is larger than ${MAX_HEADER_BYTES} bytes`);
        }
      }
    }
  } finally {
    await fh.close();
  }
}
