#!/usr/bin/env node
/**
 * Attestation verifications per second on one core: TDX, SEV-SNP and NVIDIA GPU evidence from
 * test/vectors, each verified in full (parse → verify → appraise) one after the other on the main
 * thread, with warm collateral (read from the vector folders once, then served from memory, as a
 * caching collateral source would serve it). In the same run, the cryptographic floor: the ECDSA
 * verifications each piece of evidence needs once its collateral and chains are cached, done with
 * Web Crypto (`crypto.subtle.verify`, what the verifiers use) and with `node:crypto.verify` (sync),
 * so the verifiers' overhead over the signature checks shows.
 *
 * Run with `npm run bench:verify` (builds first). BENCH_N sets the TDX count (default 5000; SNP and
 * GPU run a fifth of it). Progress goes to stderr; the last stdout line is one JSON object.
 */
import { createPublicKey, verify as nodeVerify, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const { directorySource } = await import('../dist/attest/collateral/node.js');
const { tdxVerifier } = await import('../dist/attest/tdx/index.js');
const { snpVerifier } = await import('../dist/attest/snp/index.js');
const { nvidiaVerifier, parseGpuReport } = await import('../dist/attest/nvidia/index.js');
const { parseQuote } = await import('../dist/attest/intel/index.js');

const V = join(import.meta.dirname, '../test/vectors');
const read = (...p) => new Uint8Array(readFileSync(join(V, ...p)));
const N = Number(process.env.BENCH_N ?? 5000);
const log = (s) => process.stderr.write(`${s}\n`);

/** A folder source whose answers are kept in memory after the first read: a warm collateral cache. */
function warm(...dirs) {
  const sources = dirs.map((d) => directorySource(d));
  const memo = new Map();
  return {
    get(req) {
      const key = `${req.url}|${req.files.join(',')}`;
      let p = memo.get(key);
      if (!p) {
        p = (async () => {
          for (const s of sources) {
            const item = await s.get(req);
            if (item) return item;
          }
          return undefined;
        })();
        memo.set(key, p);
      }
      return p;
    },
  };
}

/**
 * Per call of `fn`, awaited one after the other after a warm-up: wall-clock ms, and CPU ms of the
 * whole process (main thread plus the worker threads Web Crypto runs on), which other jobs on the
 * machine disturb far less than wall-clock time.
 */
async function perCall(n, fn) {
  for (let i = 0; i < Math.min(100, n); i++) await fn();
  const cpu = process.cpuUsage();
  const t = performance.now();
  for (let i = 0; i < n; i++) await fn();
  const wall = (performance.now() - t) / n;
  const c = process.cpuUsage(cpu);
  return { wall, cpu: (c.user + c.system) / 1000 / n };
}

// ---- the evidence and its options -------------------------------------------------------------------

const TDX_DIR = join(V, 'tdx/dcap-qvl_v4_b0c06f_uptodate');
const tdx = {
  evidence: read('tdx/dcap-qvl_v4_b0c06f_uptodate/quote.bin'),
  options: { at: new Date('2025-07-01T00:00:00Z'), collateral: warm(TDX_DIR) },
};

const SNP_DIR = join(V, 'sev-snp/virtee_milan_v2');
const snp = {
  evidence: read('sev-snp/virtee_milan_v2/report.bin'),
  // The VCEK from the sample folder, the Milan ASK/ARK and CRL from test/vectors/roots.
  options: { at: new Date('2025-09-01T00:00:00Z'), collateral: warm(SNP_DIR, join(V, 'roots')) },
};

const GPU_DIR = join(V, 'nvidia-gpu/nvtrust_hopper_545.00_complete');
const gpuReport = Uint8Array.from(
  Buffer.from(readFileSync(join(GPU_DIR, 'attestation_report.hex'), 'utf8').trim(), 'hex'),
);
const gpuChainPem = readFileSync(join(GPU_DIR, 'cert_chain.pem'), 'utf8');
const gpu = {
  // The NVIDIA SDK's evidence form; both RIMs come from the folder as collateral.
  evidence: new TextEncoder().encode(
    JSON.stringify({
      evidence: Buffer.from(gpuReport).toString('base64'),
      certificate: Buffer.from(gpuChainPem).toString('base64'),
    }),
  ),
  options: { at: new Date('2024-06-01T00:00:00Z'), collateral: warm(GPU_DIR) },
};

// ---- the signature checks alone ----------------------------------------------------------------------

/**
 * Per TDX quote with warm caches, src/attest/intel/verify.ts (checkQuoteSignatures) does exactly two
 * ECDSA P-256/SHA-256 verifications: the quote (header ‖ body) by the attestation key and the QE
 * report by the PCK leaf key; the chains, CRLs, TCB info and QE identity signatures are cached.
 */
const q = parseQuote(tdx.evidence);
const tdxChecks = [
  {
    spki: createPublicKey({
      key: { kty: 'EC', crv: 'P-256', ...xy(q.attestationKey) },
      format: 'jwk',
    }).export({ type: 'spki', format: 'der' }),
    curve: 'P-256',
    hash: 'SHA-256',
    sig: q.signature,
    data: q.signedData,
  },
  {
    spki: new Uint8Array(q.pckChain[0].publicKey.rawData),
    curve: 'P-256',
    hash: 'SHA-256',
    sig: q.qeReportSignature,
    data: q.qeReport.raw,
  },
];

function xy(raw) {
  const b64u = (b) => Buffer.from(b).toString('base64url');
  return { x: b64u(raw.subarray(0, 32)), y: b64u(raw.subarray(32)) };
}

/** SEV-SNP: one ECDSA P-384/SHA-384 verification of report bytes 0..0x29F by the VCEK (chain cached). */
const le = (b) => Uint8Array.from(b.subarray(0, 48)).reverse();
const snpChecks = [
  {
    spki: new X509Certificate(read('sev-snp/virtee_milan_v2/vcek.der')).publicKey.export({
      type: 'spki',
      format: 'der',
    }),
    curve: 'P-384',
    hash: 'SHA-384',
    sig: new Uint8Array([
      ...le(snp.evidence.subarray(0x2a0, 0x2e8)),
      ...le(snp.evidence.subarray(0x2e8, 0x330)),
    ]),
    data: snp.evidence.subarray(0, 0x2a0),
  },
];

/** GPU: one ECDSA P-384/SHA-384 verification of the SPDM transcript by the device key (chain, RIMs cached). */
const parsedGpu = parseGpuReport(gpuReport);
const gpuChecks = [
  {
    spki: new X509Certificate(gpuChainPem).publicKey.export({ type: 'spki', format: 'der' }),
    curve: 'P-384',
    hash: 'SHA-384',
    sig: parsedGpu.response.signature,
    data: parsedGpu.signedBytes,
  },
];

async function floors(checks) {
  const web = await Promise.all(
    checks.map(async (c) => ({
      ...c,
      key: await crypto.subtle.importKey('spki', c.spki, { name: 'ECDSA', namedCurve: c.curve }, false, [
        'verify',
      ]),
    })),
  );
  const node = checks.map((c) => ({
    ...c,
    key: createPublicKey({ key: c.spki, format: 'der', type: 'spki' }),
  }));
  // Sanity: the floor is only meaningful if these are the signatures that verify.
  for (const c of web) {
    if (!(await crypto.subtle.verify({ name: 'ECDSA', hash: c.hash }, c.key, c.sig, c.data)))
      throw new Error('floor: a signature does not verify');
  }
  for (const c of node) {
    if (!nodeVerify(c.hash, c.data, { key: c.key, dsaEncoding: 'ieee-p1363' }, c.sig))
      throw new Error('floor: a signature does not verify (node:crypto)');
  }
  return { web, node };
}

/** Web Crypto, the signatures of one piece of evidence issued together as the verifiers issue them. */
const webFloor = (keys) => () =>
  Promise.all(keys.map((c) => crypto.subtle.verify({ name: 'ECDSA', hash: c.hash }, c.key, c.sig, c.data)));
/** node:crypto.verify, synchronous on the main thread. */
const nodeFloor = (keys) => () => {
  for (const c of keys) nodeVerify(c.hash, c.data, { key: c.key, dsaEncoding: 'ieee-p1363' }, c.sig);
};

// ---- run ----------------------------------------------------------------------------------------------

/**
 * The machine is shared, so the verifier and its floor are measured in alternating rounds and each
 * round gives a ratio: load that comes and goes hits both sides of a ratio alike. Reported: the median
 * round (ms per evidence) and the median and spread of the per-round ratios.
 */
const ROUNDS = 20;
const median = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];

const verifiers = [
  ['tdx', tdxVerifier, tdx, N, tdxChecks],
  ['snp', snpVerifier, snp, Math.ceil(N / 5), snpChecks],
  ['gpu', nvidiaVerifier, gpu, Math.ceil(N / 5), gpuChecks],
];
const out = { bench: 'verify', cpu: cpus()[0]?.model, cores: cpus().length, loadavg_1m_start: loadavg()[0] };
for (const [name, verifier, ev, n, checks] of verifiers) {
  const t = performance.now();
  const first = await verifier.appraiseEvidence(ev.evidence, ev.options);
  if (first.status !== 'affirming') throw new Error(`${name}: expected affirming, got ${first.status}`);
  out[`${name}_cold_ms`] = performance.now() - t;
  const keys = await floors(checks);
  const verify = () => verifier.appraiseEvidence(ev.evidence, ev.options);
  const per = Math.ceil(n / ROUNDS);
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const v = await perCall(per, verify);
    const w = await perCall(per, webFloor(keys.web));
    const s = await perCall(per, nodeFloor(keys.node));
    rounds.push({
      ms: v.wall,
      web: w.wall,
      sync: s.wall,
      ratio: v.wall / w.wall,
      cpu: v.cpu,
      webCpu: w.cpu,
      cpuRatio: v.cpu / w.cpu,
    });
  }
  const ratios = rounds.map((r) => r.ratio);
  const ms = median(rounds.map((r) => r.ms));
  const web = median(rounds.map((r) => r.web));
  const sync = median(rounds.map((r) => r.sync));
  Object.assign(out, {
    [`${name}_cpu_ms`]: median(rounds.map((r) => r.cpu)),
    [`${name}_floor_cpu_ms`]: median(rounds.map((r) => r.webCpu)),
    [`${name}_vs_floor_cpu`]: median(rounds.map((r) => r.cpuRatio)),
    [`${name}_ms`]: ms,
    [`${name}_per_s`]: 1000 / ms,
    [`${name}_floor_ms`]: web,
    [`${name}_floor_node_sync_ms`]: sync,
    [`${name}_vs_floor`]: median(ratios),
    [`${name}_vs_floor_range`]: [Math.min(...ratios), Math.max(...ratios)],
    [`${name}_ecdsa_per_evidence`]: checks.length,
    [`${name}_n`]: per * ROUNDS,
  });
  log(
    `${name}: ${ms.toFixed(3)} ms per verification (${(1000 / ms).toFixed(0)}/s; cold ${out[`${name}_cold_ms`].toFixed(1)} ms); ` +
      `floor, ${checks.length} ECDSA: Web Crypto ${web.toFixed(3)} ms, node:crypto sync ${sync.toFixed(3)} ms; ` +
      `×${median(ratios).toFixed(2)} the Web Crypto floor (rounds ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}); ` +
      `CPU ${out[`${name}_cpu_ms`].toFixed(3)} ms vs ${out[`${name}_floor_cpu_ms`].toFixed(3)} ms, ×${out[`${name}_vs_floor_cpu`].toFixed(2)}`,
  );
}
out.floor_api =
  "crypto.subtle.verify (Web Crypto, the verifiers' own calls); node:crypto.verify (sync) alongside";
out.loadavg_1m_end = loadavg()[0];
console.log(JSON.stringify(out));
