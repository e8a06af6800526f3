/** Node edge of the tiny GGUF writer: stream a tiny model to disk. */

import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { type TinyLlamaGguf, type TinyLlamaOptions, tinyLlamaGguf } from './gguf.js';

/** Write `tinyLlamaGguf(opts)` to `path` chunk by chunk (a 1 GiB model never sits in memory). */
export async function writeTinyLlamaGguf(path: string, opts: TinyLlamaOptions = {}): Promise<TinyLlamaGguf> {
  const model = tinyLlamaGguf(opts);
  const out = createWriteStream(path);
  const failed = once(out, 'error').then(([err]) => {
    throw err;
  });
  failed.catch(() => {}); // observed through the race below
  try {
    for (const chunk of model.chunks()) {
      if (!out.write(chunk)) await Promise.race([once(out, 'drain'), failed]);
    }
    out.end();
    await Promise.race([once(out, 'finish'), failed]);
  } finally {
    out.destroy();
  }
  return model;
}
