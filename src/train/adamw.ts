/**
 * The AdamW update with global gradient-norm clipping, traced inside the llama and LoRA trainers'
 * jit-compiled steps. One function for both, so the two optimizers cannot drift apart; the
 * operations and their order are what each step did on its own, so results stay bit-identical.
 */
import { type Array as JaxArray, numpy as np } from '@jax-js/jax';

export interface OptimizerConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Global gradient-norm clip; 0 turns clipping off. */
  clip: number;
}

/**
 * One AdamW update of `params` from `grads`. Consumes params, m, v, grads, lr and the bias
 * corrections bc1 = 1−β₁^t and bc2 = 1−β₂^t (arrays, so a jit step is traced once). Weight decay
 * applies to the parameters whose `decays` entry is true (all of them when `decays` is absent).
 */
export function adamwUpdate(
  opt: OptimizerConfig,
  params: JaxArray[],
  m: JaxArray[],
  v: JaxArray[],
  grads0: JaxArray[],
  lr: JaxArray,
  bc1: JaxArray,
  bc2: JaxArray,
  decays?: readonly boolean[],
): { params: JaxArray[]; m: JaxArray[]; v: JaxArray[] } {
  let grads = grads0;
  if (opt.clip > 0) {
    let sq = np.zeros([]);
    for (const g of grads) sq = sq.add(np.square(g.ref).sum());
    const scale = np.minimum(1, np.divide(opt.clip, np.sqrt(sq).add(1e-6)));
    grads = grads.map((g) => g.mul(scale.ref));
    scale.dispose();
  }
  const newM: JaxArray[] = [];
  const newV: JaxArray[] = [];
  const newP: JaxArray[] = [];
  grads.forEach((g, i) => {
    const mi = m[i]!.mul(opt.beta1).add(g.ref.mul(1 - opt.beta1));
    const vi = v[i]!.mul(opt.beta2).add(np.square(g).mul(1 - opt.beta2));
    let update = mi.ref.div(bc1.ref).div(np.sqrt(vi.ref.div(bc2.ref)).add(opt.eps));
    const p = params[i]!;
    if ((decays === undefined || decays[i]) && opt.weightDecay > 0)
      update = update.add(p.ref.mul(opt.weightDecay));
    newP.push(p.sub(update.mul(lr.ref)));
    newM.push(mi);
    newV.push(vi);
  });
  lr.dispose();
  bc1.dispose();
  bc2.dispose();
  return { params: newP, m: newM, v: newV };
}
