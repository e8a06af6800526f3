/**
 * A key broker for the training benches (bench/train.js, bench/finetune.js), in this process: dev
 * mode, SQLite in the bench's temporary folder, the sample TEE accepted, KEKs stored through its admin
 * API. `confidentialJob` runs a job manifest as `cloister train JOB --tee sample` does
 * (src/cli/train.ts): prepareJob, a sample TEE whose host_data is the digest of the job's init-data,
 * a KbsClient sending that init-data, then runTrainingJob with its private folder in `shm`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

const dist = new URL('../../dist/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);

const { startBroker } = await load('kbs/app.js');
const { DEFAULT_CONFIG } = await load('kbs/config.js');
const { ADMIN_AUDIENCE } = await load('kbs/admin.js');
const { KbsClient, kbsAttester } = await load('tee/index.js');
const { InsecureSampleAttester, sampleHostData } = await load('tee/evidence/index.js');
const { prepareJob, runTrainingJob } = await load('train/index.js');
const { generateKek, kekToJwk } = await load('seal/keys.js');

const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

/**
 * @param {{ work: string, shm: string, log: (line: string) => void }} o
 */
export async function startJobBroker({ work, shm, log }) {
  const admin = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  writeFileSync(
    join(work, 'admin.pub.jwk'),
    JSON.stringify([{ ...(await exportJWK(admin.publicKey)), alg: 'EdDSA' }]),
  );
  writeFileSync(
    join(work, 'master.key'),
    Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64'),
  );
  const broker = await startBroker(
    {
      ...DEFAULT_CONFIG,
      port: 0,
      devMode: true,
      db: `sqlite:${join(work, 'kbs.db')}`,
      adminKeysFile: join(work, 'admin.pub.jwk'),
      masterKeyFile: join(work, 'master.key'),
      rateLimit: { perSecond: 0, burst: 0 },
    },
    { log: () => {} },
  );
  const adminToken = () =>
    new SignJWT({ role: 'admin' })
      .setProtectedHeader({ alg: 'EdDSA' })
      .setSubject('bench')
      .setAudience(ADMIN_AUDIENCE)
      .setIssuedAt()
      .setJti(crypto.randomUUID())
      .setExpirationTime('5m')
      .sign(admin.privateKey);

  /** A KEK stored in the broker under `path`; returns it (the owner keeps it to open outputs). */
  async function storeKek(path) {
    const k = generateKek(`kbs:///${path}`);
    const put = await fetch(new URL(`/admin/v1/resources/${path}`, broker.url), {
      method: 'PUT',
      headers: { authorization: `Bearer ${await adminToken()}`, 'content-type': 'application/octet-stream' },
      body: JSON.stringify(kekToJwk(k)),
    });
    if (put.status !== 201) throw new Error(`storing ${path} failed: ${put.status} ${await put.text()}`);
    return k;
  }

  /** The sample TEE launched for a job, and its broker client, as `cloister train --tee sample` makes them. */
  async function teeFor(initData) {
    const attester = new InsecureSampleAttester({ hostData: await sampleHostData(initData) });
    const client = new KbsClient({
      url: broker.url,
      attester: kbsAttester('sample', attester),
      initData,
      retries: 1,
    });
    return { attester, client };
  }

  let apiLines = 0;
  /** Runs a job manifest (written into `dir`) as `cloister train` runs it; returns the result and timings. */
  async function confidentialJob(dir, manifest, onStep) {
    writeFileSync(join(dir, 'job.json'), JSON.stringify(manifest, null, 2));
    const t0 = performance.now();
    // When the job's log says the inputs are unsealed (and a command trainer started), and when it
    // seals the first output: the wall time split into setup, training and finish.
    let trainFrom;
    let trainTo;
    const prepared = await prepareJob(join(dir, 'job.json'));
    const { attester, client } = await teeFor(prepared.initData);
    const result = await runTrainingJob(prepared, {
      broker: client,
      tee: { kind: 'sample', attester },
      outputDir: join(dir, 'out'),
      privateDir: { parent: shm },
      log: (l) => {
        // The training API logs every request (a line per metrics POST, i.e. per step): counted, not shown.
        if (/^(GET|POST) \/train\/v1\//.test(l)) return apiLines++;
        if (/^(unsealed inputs|running )/.test(l) && trainTo === undefined) trainFrom = performance.now();
        if (/^sealed /.test(l)) trainTo ??= performance.now();
        log(`    [job] ${l}`);
      },
      ...(onStep ? { onStep } : {}),
    });
    const wall = (performance.now() - t0) / 1000;
    if (result.status !== 0) throw new Error(`the job ended with status ${result.status}`);
    if (result.logIndex === undefined) throw new Error('the receipt was not appended');
    const phases = {
      setup: round((trainFrom - t0) / 1000),
      train: round((trainTo - trainFrom) / 1000),
      finish: round((performance.now() - trainTo) / 1000),
    };
    return { result, wall, phases };
  }

  return { broker, storeKek, teeFor, confidentialJob };
}
