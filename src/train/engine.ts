/**
 * The training engine (jax-js on WebAssembly), started once per process. A bare `init()` crashes in
 * Node (it probes WebGPU/WebGL), so only the wasm backend is started and made the default device.
 */
import { defaultDevice, init } from '@jax-js/jax';

let ready: Promise<void> | undefined;

/** Starts the jax-js wasm backend once; later calls share the first start. */
export async function initEngine(): Promise<void> {
  ready ??= (async () => {
    await init('wasm');
    defaultDevice('wasm');
  })();
  return ready;
}
