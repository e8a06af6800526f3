/**
 * The array engine of the built-in trainers: @jax-js/jax (pinned, 0.1.25) on its WebAssembly device.
 * Node has no global `Worker`, so the wasm backend runs single-threaded here, which is what makes a
 * training run bit-deterministic (no thread-count-dependent reduction order).
 */
import { defaultDevice, init } from '@jax-js/jax';

let ready: Promise<void> | undefined;

/**
 * Starts the wasm device once per process and makes it the default. A bare `init()` also tries WebGPU
 * and WebGL, which crashes under Node; concurrent callers share the one start.
 */
export function initEngine(): Promise<void> {
  if (ready === undefined) {
    ready = (async () => {
      await init('wasm');
      defaultDevice('wasm');
    })();
    // A failed start may be retried by a later call instead of failing forever.
    ready.catch(() => {
      ready = undefined;
    });
  }
  return ready;
}
