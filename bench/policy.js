#!/usr/bin/env node
/**
 * Policy evaluation speed (npm run build first; then node bench/policy.js). One thread. Measures the
 * key broker's per-release work: policyInputFromEar on a verified EAR (TDX CPU + 2 GPUs) and
 * evaluatePolicy with the default policy and with a 10-clause policy, plus the denial path (which
 * evaluates each clause again to name the failing ones) and compiling. BENCH_MS sets the time per
 * measurement (default 1000). The last line is one JSON object.
 */
import { performance } from 'node:perf_hooks';

const { compilePolicy, DEFAULT_RESOURCE_POLICY, evaluatePolicy, policyInputFromEar, preparePolicyInput } =
  await import('../dist/policy/index.js');

const budgetMs = Number(process.env.BENCH_MS ?? 1000);
const log = (...a) => process.stderr.write(`${a.join(' ')}\n`);

/** Operations per second of fn, after a warm-up, over about budgetMs. */
function rate(fn) {
  for (let i = 0; i < 2000; i++) fn();
  let n = 0;
  const t = performance.now();
  let elapsed = 0;
  while (elapsed < budgetMs) {
    for (let i = 0; i < 1000; i++) fn();
    n += 1000;
    elapsed = performance.now() - t;
  }
  return Math.round((n / elapsed) * 1000);
}

const mrTd = 'ab'.repeat(48);
const submod = (kind, claims) => ({
  status: 'affirming',
  kind,
  trustVector: { hardware: 2, configuration: 2, executables: 2, instance_identity: 2 },
  claims,
  policyId: 'cloister:policy/default',
  reasons: [],
  insecure: false,
});
// A verified EAR as verifyEar returns it; claims about as large as a real TDX quote's.
const ear = {
  profile: 'tag:github.com,2023:veraison/ear',
  issuedAt: new Date(),
  verifierId: { developer: 'https://cloister.dev', build: 'bench' },
  status: 'affirming',
  submods: {
    cpu0: submod('tdx', {
      mr_td: mrTd,
      mr_seam: 'cd'.repeat(48),
      mr_config_id: '00'.repeat(48),
      mr_owner: '00'.repeat(48),
      rtmr0: '01'.repeat(48),
      rtmr1: '02'.repeat(48),
      rtmr2: '03'.repeat(48),
      rtmr3: '00'.repeat(48),
      report_data: '5a'.repeat(64),
      tcb_status: 'UpToDate',
      tee_tcb_svn: '03000500000000000000000000000000',
      debug: false,
      fmspc: '00806f050000',
    }),
    gpu0: submod('nvidia', {
      hwmodel: 'GH100',
      driver_version: '550.54.15',
      vbios_version: '96.00.5e.00.01',
    }),
    gpu1: submod('nvidia', {
      hwmodel: 'GH100',
      driver_version: '550.54.15',
      vbios_version: '96.00.5e.00.01',
    }),
  },
};
const ctx = {
  resource: { uri: 'kbs:///acme/models/llama', repository: 'acme', type: 'models', tag: 'llama' },
  tenant: 'acme',
  init_data: { image: 'ghcr.io/acme/llm@sha256:01' },
};

const TEN = `"cpu0" in submods
&& cpu.status == "affirming"
&& tee == "tdx"
&& cpu.claims.mr_td == "${mrTd}"
&& cpu.claims.tcb_status == "UpToDate"
&& !cpu.claims.debug
&& gpus.all(g, g.status == "affirming" && g.claims.hwmodel == "GH100")
&& size(gpus) == 2
&& resource.repository == tenant
&& init_data.image.startsWith("ghcr.io/acme/")`;

let t = performance.now();
const defaultPolicy = compilePolicy(DEFAULT_RESOURCE_POLICY);
const firstCompileMs = performance.now() - t;
const tenClause = compilePolicy(TEN);
if (tenClause.conjuncts.length !== 10) throw new Error('the 10-clause policy must have 10 conjuncts');

const input = policyInputFromEar(ear, ctx);
for (const [name, p] of [
  ['default', defaultPolicy],
  ['10-clause', tenClause],
]) {
  const d = evaluatePolicy(p, input);
  if (!d.allow) throw new Error(`${name} policy should allow: ${d.reasons.join('; ')}`);
}
const denyInput = policyInputFromEar(
  { ...ear, submods: { ...ear.submods, gpu1: { ...ear.submods.gpu1, status: 'warning' } } },
  ctx,
);
if (evaluatePolicy(tenClause, denyInput).allow) throw new Error('the deny input must be denied');

const results = {};
results.default_evals_per_s = rate(() => evaluatePolicy(defaultPolicy, policyInputFromEar(ear, ctx)));
log(`default policy, input from EAR + evaluate: ${results.default_evals_per_s}/s`);
results.ten_clause_evals_per_s = rate(() => evaluatePolicy(tenClause, policyInputFromEar(ear, ctx)));
log(`10-clause policy, input from EAR + evaluate: ${results.ten_clause_evals_per_s}/s`);
const prepared = preparePolicyInput(input);
results.default_prepared_evals_per_s = rate(() => evaluatePolicy(defaultPolicy, prepared));
log(`default policy, prepared input: ${results.default_prepared_evals_per_s}/s`);
results.ten_clause_prepared_evals_per_s = rate(() => evaluatePolicy(tenClause, prepared));
log(`10-clause policy, prepared input: ${results.ten_clause_prepared_evals_per_s}/s`);
results.ten_clause_denials_per_s = rate(() => evaluatePolicy(tenClause, denyInput));
log(`10-clause policy, denial with reasons: ${results.ten_clause_denials_per_s}/s`);
t = performance.now();
let compiles = 0;
while (performance.now() - t < budgetMs / 2) {
  compilePolicy(`${TEN} && tenant != "${compiles}"`);
  compiles++;
}
results.ten_clause_compiles_per_s = Math.round((compiles / (performance.now() - t)) * 1000);
log(
  `10-clause policy, compile: ${results.ten_clause_compiles_per_s}/s (first compile incl. environment ${firstCompileMs.toFixed(1)} ms)`,
);
results.default_us_per_eval = Math.round((1e6 / results.default_evals_per_s) * 100) / 100;
results.ten_clause_us_per_eval = Math.round((1e6 / results.ten_clause_evals_per_s) * 100) / 100;
results.first_compile_ms = Math.round(firstCompileMs * 10) / 10;
results.node = process.version;
console.log(JSON.stringify(results));
