/**
 * The resource policy used when the owner has set none. Every submodule must be affirming, so the CPU
 * and every GPU are judged genuine, up to date and not in debug mode by their verifiers; a missing
 * `cpu0` is refused. The software `sample` TEE is never affirming (its EAR status is at best
 * `warning`), so it is refused unless the operator turns on development mode, and even then only when
 * being insecure is its only fault (`warning`, never `contraindicated`).
 */
export const DEFAULT_RESOURCE_POLICY = `"cpu0" in submods
&& (cpu.status == "affirming" || (dev_mode && cpu.insecure && cpu.status == "warning"))
&& gpus.all(g, g.status == "affirming" || (dev_mode && g.insecure && g.status == "warning"))
&& submods.all(n, submods[n].status == "affirming" || (dev_mode && submods[n].insecure && submods[n].status == "warning"))
&& (dev_mode || !submods.exists(n, submods[n].insecure))`;
