// Run by aead-native.slow.test.ts under valgrind: drives the addon through every length combination
// around chunk and tag boundaries, valid or not, so memcheck sees any read or write out of bounds.
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

const module = { exports: {} };
process.dlopen(
  module,
  fileURLToPath(new URL('../../build/Release/cloister_aes.node', import.meta.url)),
  constants.dlopen.RTLD_NOW | (constants.dlopen.RTLD_DEEPBIND ?? 0),
);
const A = module.exports;
const k = new Uint8Array(32);
const p = new Uint8Array(7);
const a = new Uint8Array(5);
let calls = 0;
const attempt = (f) => {
  calls++;
  try {
    f();
  } catch (e) {
    if (!(e instanceof TypeError || e instanceof RangeError)) throw e;
  }
};
for (let chunk = 1; chunk <= 40; chunk += 3) {
  for (let n = 0; n <= 130; n += 7) {
    const count = Math.max(1, Math.ceil(n / chunk));
    const ct = new Uint8Array(n + 16 * count);
    for (const extra of [-1, 0, 1]) {
      attempt(() =>
        A.seal(k, p, a, 0, chunk, true, new Uint8Array(n), new Uint8Array(Math.max(0, ct.length + extra))),
      );
    }
    A.seal(k, p, a, 0, chunk, true, new Uint8Array(n), ct);
    for (let cut = 0; cut <= ct.length; cut += 3) {
      const c = Math.max(1, Math.ceil(cut / (chunk + 16)));
      for (const len of [cut - 16 * c - 1, cut - 16 * c, cut - 16 * c + 1, 0]) {
        attempt(() => A.open(k, p, a, 0, chunk, true, ct.subarray(0, cut), new Uint8Array(Math.max(0, len))));
      }
    }
  }
}
console.log(`memcheck: ${calls} calls`);
