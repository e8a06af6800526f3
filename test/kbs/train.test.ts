/**
 * The broker's side of confidential training over HTTP: checkpoint compare-and-set (first checkpoint,
 * advances, rollback and fork refused with what the broker holds, a retried advance, a bound on the
 * number), the job's checkpoint MAC key, training receipts appended to the transparency log (one per
 * job), and a release policy that requires a receipt from an approved trainer on a pinned image. Only
 * an attested session whose init-data names the job, its trainer and recipients may use them; a
 * receipt is recorded only from a TEE of the session's identity to which every recipient's key would
 * be released anyway (no receipt planting). On SQLite, memory and PostgreSQL (CLOISTER_TEST_PG=skip
 * leaves that out).
 */
import { createHash, createHmac, hkdfSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSampleAttester } from '../../src/attest/index.js';
import { checkReceiptEnvelope, identityMismatch, launchMeasurement } from '../../src/kbs/train.js';
import { createAttestedSigner } from '../../src/tee/attested-receipt.js';
import {
  type CpuAttester,
  InsecureSampleAttester,
  padReportData,
  sampleHostData,
} from '../../src/tee/evidence/index.js';
import { type CheckpointRef, KbsClient, KbsClientError } from '../../src/tee/kbs-client.js';
import { kbsAttester } from '../../src/tee/keys.js';
import { signTrainingReceipt, type TrainerRecord } from '../../src/tee/training-receipt.js';
import { bs, fromBase64, fromHex } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import { trainInitData } from '../../src/wire/kbs.js';
import { sampleFacts } from '../train/receipt-fixture.js';
import {
  PG_ENABLED,
  pgSchema,
  sampleAttester,
  type TestBroker,
  type TestKeys,
  testBroker,
  testKeys,
} from './helpers.js';

const sha = (s: string | Uint8Array) => createHash('sha256').update(s).digest('hex');
const MANIFEST = '{"version":1,"name":"tiny-lm","trainer":{"builtin":"llama"}}';
const JOB = sha(MANIFEST);
const OTHER_JOB = sha('another manifest');
const APPROVED_TRAINER = {
  kind: 'builtin',
  name: 'llama',
  software: { name: 'cloister', version: '0.1.0', digest: `sha256:${sha('cloister build')}` },
} as const;
const OTHER_TRAINER: TrainerRecord = {
  kind: 'builtin',
  name: 'llama',
  software: { name: 'x', version: '1', digest: `sha256:${sha('unknown')}` },
};
/** A trainer's digest as init-data, receipts and policies name it: sha256 of JCS(trainer record). */
const digestOf = (t: unknown) => `sha256:${sha(canonicalizeBytes(t))}`;
const APPROVED = digestOf(APPROVED_TRAINER);
const MODEL_KEY = 'owner/model/key';
const MODEL_URI = `kbs:///${MODEL_KEY}`;
/** The launch measurement of the approved trainer image (what the model owner pins). */
const IMAGE = 'ab'.repeat(48);
const OTHER_IMAGE = 'cd'.repeat(48);
/**
 * The model owner's policy: the key goes to the approved trainer running in the approved image (it
 * seals the model to this key), and to anyone once a receipt says that trainer in that image made it.
 */
const MODEL_POLICY = `(init_data.?data["cloister.train.trainer"].orValue("") == "${APPROVED}"
  && cpu.claims.?measurement.orValue("") == "${IMAGE}")
|| receipts.exists(r, r.trainer.digest == "${APPROVED}" && r.tee.measurement == "${IMAGE}" && size(r.outputs) > 0)`;
const cp = (number: number, salt = ''): CheckpointRef => ({
  number,
  sha256: sha(`checkpoint ${number}${salt}`),
});

interface Tee {
  client: KbsClient;
  /** The TEE's evidence source: its receipt keys are bound with it. */
  attester: CpuAttester;
}

/**
 * A sample TEE launched for a job with the init-data `cloister train` gives it (job, trainer digest,
 * recipients; its host_data holds that init-data's digest) and an image (measurement).
 */
async function launch(
  b: TestBroker,
  o: {
    job?: string;
    trainer?: string;
    recipients?: string[];
    measurement?: string;
    initData?: string;
    debug?: boolean;
  } = {},
): Promise<Tee> {
  const body = o.initData ?? trainInitData(o.job ?? JOB, o.trainer ?? APPROVED, o.recipients ?? [MODEL_URI]);
  const hostData = await sampleHostData({ format: 'json', body });
  const measurement = o.measurement ?? IMAGE;
  const attester = o.debug
    ? debugAttester(measurement, hostData)
    : new InsecureSampleAttester({ measurement, hostData });
  return {
    attester,
    client: new KbsClient({
      url: b.url,
      attester: kbsAttester('sample', attester),
      initData: { format: 'json', body },
    }),
  };
}

/** A sample TEE in debug mode: its evidence is appraised contraindicated. */
function debugAttester(measurement: string, hostData: string): CpuAttester {
  const a = createSampleAttester({ debug: true, measurement, hostData });
  return {
    source: 'sample (debug)',
    insecure: true,
    async collect(reportData) {
      return { kind: 'sample', evidence: await (await a).attest(padReportData(reportData)) };
    },
  };
}

/** The model key and the policy that lets the job's TEE (and, with a receipt, the edge) have it. */
async function putModelKey(b: TestBroker): Promise<void> {
  const admin = await b.admin();
  const secret = new TextEncoder().encode('the model key');
  expect((await b.call('PUT', `/admin/v1/resources/${MODEL_KEY}`, admin, secret)).status).toBe(201);
  const set = await b.call('PUT', '/admin/v1/policies', admin, {
    scope: `resource:${MODEL_KEY}`,
    source: MODEL_POLICY,
  });
  expect(set.status).toBe(200);
}

/** The TEE's client, for the checkpoint tests. */
async function trainer(b: TestBroker, job = JOB): Promise<KbsClient> {
  return (await launch(b, { job })).client;
}

/** An unsigned DSSE envelope of a training receipt, for the structural refusals (checked before signatures). */
function receipt(
  o: {
    job?: string;
    trainer?: unknown;
    recipients?: string[];
    payloadType?: string;
    predicateType?: string;
  } = {},
): Uint8Array {
  const output = sha('sealed model');
  const statement = {
    _type: 'https://in-toto.io/Statement/v1',
    subject: [{ name: 'model.gguf.sealed', digest: { sha256: output } }],
    predicateType: o.predicateType ?? 'https://cloister.dev/attestation/training/v1',
    predicate: {
      manifest: { sha256: o.job ?? JOB, name: 'tiny-lm' },
      trainer: o.trainer ?? APPROVED_TRAINER,
      trainerDigest: digestOf(o.trainer ?? APPROVED_TRAINER),
      outputs: [
        {
          file: 'model.gguf.sealed',
          sealedSha256: output,
          recipients: o.recipients ?? [MODEL_URI],
        },
      ],
    },
  };
  return new TextEncoder().encode(
    JSON.stringify({
      payloadType: o.payloadType ?? 'application/vnd.in-toto+json',
      payload: Buffer.from(JSON.stringify(statement)).toString('base64'),
      signatures: [{ keyid: 'test', sig: Buffer.from('not checked here').toString('base64') }],
    }),
  );
}

/** A training receipt signed by a key bound to `job` with `attester`'s evidence, as `cloister train` makes it. */
async function signedReceipt(
  attester: CpuAttester,
  o: { job?: string; trainer?: TrainerRecord; recipients?: string[]; metrics?: Record<string, number> } = {},
): Promise<Uint8Array> {
  const job = o.job ?? JOB;
  const facts = sampleFacts({
    manifest: { sha256: job, name: 'tiny-lm' },
    trainer: o.trainer ?? APPROVED_TRAINER,
    outputs: [
      {
        file: 'model.gguf.sealed',
        sealedSha256: sha('sealed model'),
        recipients: o.recipients ?? [MODEL_URI],
      },
    ],
    recipients: o.recipients ?? [MODEL_URI],
    ...(o.metrics ? { metrics: o.metrics } : {}),
  });
  const signer = await createAttestedSigner(attester, fromHex(job));
  return new TextEncoder().encode(JSON.stringify(await signTrainingReceipt(facts, signer)));
}

/** The SHA-256 of a receipt's Statement (its decoded DSSE payload): what the broker knows it by. */
const statementSha = (envelope: Uint8Array) =>
  sha(fromBase64(JSON.parse(new TextDecoder().decode(envelope)).payload));

/** The refusal a promise ends with. */
const refusal = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as KbsClientError,
  );

async function logEntries(
  b: TestBroker,
): Promise<{ kind: string; subject: string; details: Record<string, unknown> }[]> {
  const r = await b.call('GET', '/admin/v1/log/entries', await b.admin());
  expect(r.status).toBe(200);
  return (await r.json()).entries;
}

interface Backend {
  name: string;
  enabled: boolean;
  db(): { url?: string; drop(): Promise<void> };
}

const BACKENDS: Backend[] = [
  { name: 'sqlite', enabled: true, db: () => ({ drop: async () => {} }) },
  { name: 'memory', enabled: true, db: () => ({ url: 'memory:', drop: async () => {} }) },
  { name: 'postgres', enabled: PG_ENABLED, db: pgSchema },
];

for (const backend of BACKENDS) {
  describe.skipIf(!backend.enabled)(`training on the broker (${backend.name})`, () => {
    let b: TestBroker;
    let db: ReturnType<Backend['db']>;
    beforeAll(async () => {
      db = backend.db();
      b = await testBroker({ devMode: true, ...(db.url ? { db: db.url } : {}) });
      await putModelKey(b);
    });
    afterAll(async () => {
      await b?.close();
      await db?.drop();
    });

    it('starts with no checkpoint, takes the first and advances one at a time, logging each', async () => {
      const t = await trainer(b);
      expect(await t.checkpointLatest(JOB)).toBeNull();
      await t.checkpointAdvance(JOB, null, cp(1));
      await t.checkpointAdvance(JOB, cp(1), cp(2));
      await t.checkpointAdvance(JOB, cp(2), cp(3));
      expect(await t.checkpointLatest(JOB)).toEqual(cp(3));
      // Another session of the same job (a resumed run) sees it too.
      expect(await (await trainer(b)).checkpointLatest(JOB)).toEqual(cp(3));
      const advances = (await logEntries(b)).filter((e) => e.kind === 'train-checkpoint');
      expect(advances.map((e) => e.details)).toEqual([
        { job: JOB, number: 1, sha256: cp(1).sha256, prev: null, tee: 'sample' },
        { job: JOB, number: 2, sha256: cp(2).sha256, prev: cp(1), tee: 'sample' },
        { job: JOB, number: 3, sha256: cp(3).sha256, prev: cp(2), tee: 'sample' },
      ]);
      expect(advances[0]!.subject).toBe(`train:${JOB}`);
    });

    it('refuses a rollback, a fork and a restart with 409 checkpoint-conflict naming what it holds', async () => {
      const t = await trainer(b);
      const conflict = async (prev: CheckpointRef | null, next: CheckpointRef) => {
        const e = await refusal(t.checkpointAdvance(JOB, prev, next));
        expect(e).toBeInstanceOf(KbsClientError);
        expect(e).toMatchObject({ status: 409, type: 'checkpoint-conflict', code: 'checkpoint-conflict' });
        return (e as Error).message;
      };
      const held = `the broker holds checkpoint 3 (sha256 ${cp(3).sha256.slice(0, 12)}…) for this job`;
      expect(await conflict(cp(1), cp(2))).toContain(
        `${held}; you offered to advance from 1 (sha256 ${cp(1).sha256.slice(0, 12)}…): an older checkpoint (rollback) or a fork`,
      );
      expect(await conflict(cp(3, 'fork'), cp(4))).toMatch(
        /holds checkpoint 3 .*another checkpoint of the same number \(a fork\)/,
      );
      expect(await conflict(null, cp(1))).toMatch(/holds checkpoint 3 .*start from none/);
      expect(await conflict(cp(7), cp(8))).toMatch(/never recorded/);
      // next must be prev + 1.
      expect(await conflict(cp(3), cp(5))).toMatch(/next.number must be 4/);
      expect(await t.checkpointLatest(JOB)).toEqual(cp(3));
      const log = await logEntries(b);
      expect(log.filter((e) => e.kind === 'train-checkpoint')).toHaveLength(3);
      expect(b.lines.join('\n')).toMatch(/training checkpoint refused \(job [0-9a-f]{64}\): .*rollback/);
    });

    it('answers a retried advance (already applied) with success, logging it once', async () => {
      const t = await trainer(b);
      await t.checkpointAdvance(JOB, cp(3), cp(4));
      await t.checkpointAdvance(JOB, cp(3), cp(4));
      expect(await t.checkpointLatest(JOB)).toEqual(cp(4));
      expect((await logEntries(b)).filter((e) => e.kind === 'train-checkpoint')).toHaveLength(4);
    });

    it('keeps jobs apart', async () => {
      const other = await trainer(b, OTHER_JOB);
      expect(await other.checkpointLatest(OTHER_JOB)).toBeNull();
      await other.checkpointAdvance(OTHER_JOB, null, cp(1, 'other'));
      expect(await other.checkpointLatest(OTHER_JOB)).toEqual(cp(1, 'other'));
      expect(await (await trainer(b)).checkpointLatest(JOB)).toEqual(cp(4));
    });

    it('records no receipt planted by a TEE the recipient key would not be released to', async () => {
      const before = (await logEntries(b)).length;
      // Another image, launched for some job with the approved trainer named in its init-data and the
      // model key among its recipients: its receipt would make the model key releasable to anyone.
      const attacker = await launch(b, { job: OTHER_JOB, measurement: OTHER_IMAGE });
      const planted = await refusal(
        attacker.client.appendReceipt(OTHER_JOB, await signedReceipt(attacker.attester, { job: OTHER_JOB })),
      );
      expect(planted).toMatchObject({ status: 403, type: 'recipient-denied' });
      expect(planted!.message).toContain(
        `the job seals to ${MODEL_URI}, but that key would not be released to this TEE`,
      );
      // The owner sees it in its log like a refused release, with what was asked for.
      const denial = (await logEntries(b)).at(-1)!;
      expect(denial).toMatchObject({
        kind: 'denial',
        subject: MODEL_KEY,
        details: { allowed: false, via: 'session', receipt: { job: OTHER_JOB } },
      });
      expect(JSON.stringify(denial.details.reasons)).toMatch(/receipts\.exists/);
      expect(b.lines.join('\n')).toMatch(
        new RegExp(`training receipt refused \\(job ${OTHER_JOB}\\): ${MODEL_URI} would not be released`),
      );

      // A recipient that names no resource is refused in the same words (no probing).
      const nowhere = 'kbs:///owner/nothing/key';
      const stray = await launch(b, { job: OTHER_JOB, recipients: [nowhere] });
      const unknown = await refusal(
        stray.client.appendReceipt(
          OTHER_JOB,
          await signedReceipt(stray.attester, { job: OTHER_JOB, recipients: [nowhere] }),
        ),
      );
      expect(unknown).toMatchObject({ status: 403, type: 'recipient-denied' });
      expect(unknown!.message).toContain(`the job seals to ${nowhere}, but that key would not`);
      expect((await logEntries(b)).at(-1)).toMatchObject({
        kind: 'denial',
        subject: 'owner/nothing/key',
        details: { reasons: ['unknown resource'], receipt: { job: OTHER_JOB } },
      });

      // Nothing was recorded: the edge still gets nothing.
      const log = await logEntries(b);
      expect(log.slice(before).map((e) => e.kind)).toEqual(['denial', 'denial']);
      const edge = new KbsClient({ url: b.url, attester: await sampleAttester() });
      await expect(edge.getResource(MODEL_KEY)).rejects.toMatchObject({ status: 403, type: 'denied' });
    });

    it('records a receipt only for what the TEE was launched for, from that TEE', async () => {
      const t = await launch(b);
      // Another trainer than the init-data names.
      const trainerRefused = await refusal(
        t.client.appendReceipt(JOB, await signedReceipt(t.attester, { trainer: OTHER_TRAINER })),
      );
      expect(trainerRefused).toMatchObject({ status: 403, type: 'job-not-bound' });
      expect(trainerRefused!.message).toContain(
        `the receipt's trainer ${digestOf(OTHER_TRAINER)} is not the one this TEE was launched for (its init-data names ${APPROVED})`,
      );
      // A recipient the init-data does not name.
      const extra = await refusal(
        t.client.appendReceipt(
          JOB,
          await signedReceipt(t.attester, { recipients: [MODEL_URI, 'kbs:///owner/other/key'] }),
        ),
      );
      expect(extra).toMatchObject({ status: 403, type: 'job-not-bound' });
      expect(extra!.message).toMatch(
        /sealed to kbs:\/\/\/owner\/other\/key, which this TEE's init-data does not name/,
      );
      // Signed in another TEE: another image, or without the init-data in its evidence.
      const elsewhere = new InsecureSampleAttester({
        measurement: OTHER_IMAGE,
        hostData: await sampleHostData({ format: 'json', body: trainInitData(JOB, APPROVED, [MODEL_URI]) }),
      });
      await expect(t.client.appendReceipt(JOB, await signedReceipt(elsewhere))).rejects.toMatchObject({
        status: 400,
        type: 'bad-receipt',
        message: expect.stringMatching(
          /signed in another TEE than the one this session attested \(measurement differ\)/,
        ),
      });
      const noInitData = new InsecureSampleAttester({ measurement: IMAGE });
      await expect(t.client.appendReceipt(JOB, await signedReceipt(noInitData))).rejects.toMatchObject({
        status: 400,
        // The receipt verifier sees it first: the evidence does not hold the job's init-data digest.
        message: expect.stringMatching(/host_data/),
      });
      // Evidence appraised contraindicated (a debug TEE), even one the session shares.
      const debug = await launch(b, { debug: true });
      await expect(
        debug.client.appendReceipt(JOB, await signedReceipt(debug.attester)),
      ).rejects.toMatchObject({
        status: 400,
        type: 'bad-receipt',
        message: expect.stringMatching(/evidence is contraindicated: debug is on/),
      });
      expect((await logEntries(b)).filter((e) => e.kind === 'train-receipt')).toEqual([]);
    });

    it('releases the model key only once a receipt from the approved trainer and image names it; one per job', async () => {
      const edge = new KbsClient({ url: b.url, attester: await sampleAttester() });
      await expect(edge.getResource(MODEL_KEY)).rejects.toMatchObject({ status: 403, type: 'denied' });

      const t = await launch(b);
      const envelope = await signedReceipt(t.attester);
      const appended = await t.client.appendReceipt(JOB, envelope);
      expect(appended.sha256).toBe(statementSha(envelope));
      const entries = await logEntries(b);
      const entry = entries[appended.logIndex]!;
      expect(entry).toMatchObject({
        kind: 'train-receipt',
        subject: `train:${JOB}`,
        details: {
          job: JOB,
          sha256: statementSha(envelope),
          subjects: [{ name: 'model.gguf.sealed', sha256: sha('sealed model') }],
          trainer: { kind: 'builtin', name: 'llama', digest: APPROVED },
          recipients: [MODEL_URI],
          tee: { kind: 'sample', insecure: true, status: 'warning', measurement: IMAGE },
        },
      });
      // The same receipt again, or the same Statement in another envelope encoding, is the same
      // record, not a second entry.
      expect(await t.client.appendReceipt(JOB, envelope)).toEqual(appended);
      const reencoded = new TextEncoder().encode(
        JSON.stringify(JSON.parse(new TextDecoder().decode(envelope)), null, 2),
      );
      expect(sha(reencoded)).not.toBe(sha(envelope));
      expect(await (await launch(b)).client.appendReceipt(JOB, reencoded)).toEqual(appended);
      expect(await logEntries(b)).toHaveLength(entries.length);
      // Another receipt for the job is refused, naming the first.
      const second = await refusal(
        t.client.appendReceipt(JOB, await signedReceipt(t.attester, { metrics: { loss: 0.1 } })),
      );
      expect(second).toMatchObject({ status: 409, type: 'receipt-exists' });
      expect(second!.message).toContain(`this job already has a receipt (sha256 ${appended.sha256}`);
      expect(await logEntries(b)).toHaveLength(entries.length);

      expect(new TextDecoder().decode(await edge.getResource(MODEL_KEY))).toBe('the model key');
      expect((await logEntries(b)).at(-1)).toMatchObject({ kind: 'release', subject: MODEL_KEY });
    });

    it('shows the receipts to the admin explain endpoint as well', async () => {
      const edge = new KbsClient({ url: b.url, attester: await sampleAttester() });
      const r = await b.call('POST', '/admin/v1/policy/evaluate', await b.admin(), {
        token: await edge.token(),
        resource: MODEL_KEY,
      });
      expect(r.status).toBe(200);
      expect(await r.json()).toMatchObject({ allow: true });
    });
  });
}

describe('training endpoints refuse', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true, db: 'memory:' });
    await putModelKey(b);
  });
  afterAll(() => b.close());

  const get = (path: string, cookie?: string) =>
    fetch(new URL(path, b.url), { headers: cookie ? { cookie } : {} });
  const problem = async (r: Response) => ({
    status: r.status,
    type: ((await r.json()).type as string).split('/').pop(),
  });

  it('a request without an attested session (401)', async () => {
    expect(await problem(await get(`/cloister/v1/train/${JOB}/checkpoint`))).toEqual({
      status: 401,
      type: 'no-session',
    });
    expect(await problem(await get(`/cloister/v1/train/${JOB}/key`))).toEqual({
      status: 401,
      type: 'no-session',
    });
    // A session that has only asked for a challenge has not attested.
    const auth = await fetch(new URL('/kbs/v0/auth', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: '0.4.0', tee: 'sample' }),
    });
    const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
    expect(await problem(await get(`/cloister/v1/train/${JOB}/checkpoint`, cookie))).toEqual({
      status: 401,
      type: 'not-attested',
    });
    const post = await fetch(new URL(`/cloister/v1/train/${JOB}/receipt`, b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', cookie },
      body: bs(receipt()),
    });
    expect(await problem(post)).toEqual({ status: 401, type: 'not-attested' });
  });

  it('a session whose init-data names no job, another job, no trainer or no recipients (403), with the reason', async () => {
    const none = new KbsClient({ url: b.url, attester: await sampleAttester() });
    await expect(none.checkpointLatest(JOB)).rejects.toMatchObject({
      status: 403,
      type: 'job-not-bound',
      message: expect.stringMatching(/no init-data naming a training job.*cloister\.train\.manifest/),
    });
    const other = await trainer(b, OTHER_JOB);
    await expect(other.checkpointAdvance(JOB, null, cp(1))).rejects.toMatchObject({
      status: 403,
      type: 'job-not-bound',
      message: expect.stringContaining(`names training job ${OTHER_JOB}, not ${JOB}`),
    });
    await expect(other.appendReceipt(JOB, receipt())).rejects.toMatchObject({ status: 403 });
    await expect(other.trainKey(JOB)).rejects.toMatchObject({ status: 403, type: 'job-not-bound' });
    // Init-data of the job alone (as before trainers and recipients were named) is not enough.
    const jobOnly = JSON.stringify({
      version: '0.1.0',
      algorithm: 'sha256',
      data: { 'cloister.train.manifest': JOB },
    });
    const old = await launch(b, { initData: jobOnly });
    for (const call of [
      () => old.client.checkpointLatest(JOB),
      () => old.client.checkpointAdvance(JOB, null, cp(1)),
      () => old.client.trainKey(JOB),
      () => old.client.appendReceipt(JOB, receipt()),
    ])
      await expect(call()).rejects.toMatchObject({
        status: 403,
        type: 'job-not-bound',
        message: expect.stringMatching(/init-data names no trainer: data\["cloister\.train\.trainer"\]/),
      });
    const noRecipients = JSON.stringify({
      version: '0.1.0',
      algorithm: 'sha256',
      data: { 'cloister.train.manifest': JOB, 'cloister.train.trainer': APPROVED },
    });
    await expect((await launch(b, { initData: noRecipients })).client.trainKey(JOB)).rejects.toMatchObject({
      status: 403,
      type: 'job-not-bound',
      message: expect.stringMatching(
        /names no recipients: data\["cloister\.train\.recipients"\] must be a non-empty JSON array/,
      ),
    });
    expect(await (await trainer(b)).checkpointLatest(JOB)).toBeNull();
  });

  it('a job id that is not 64 lower-case hex digits (400)', async () => {
    const t = await trainer(b);
    for (const job of [JOB.toUpperCase(), JOB.slice(1), 'tiny-lm', `${JOB}0`]) {
      await expect(t.checkpointLatest(job), job).rejects.toMatchObject({ status: 400, type: 'bad-job' });
    }
  });

  it('a malformed advance (400), a checkpoint past the bound (400), a big body (413)', async () => {
    const t = await trainer(b);
    await expect(t.checkpointAdvance(JOB, null, { number: 0, sha256: cp(1).sha256 })).rejects.toMatchObject({
      status: 400,
      type: 'malformed-request',
    });
    await expect(t.checkpointAdvance(JOB, null, { number: 1, sha256: 'AB' })).rejects.toMatchObject({
      status: 400,
      type: 'malformed-request',
    });
    await expect(t.checkpointAdvance(JOB, cp(1_000_000), cp(1_000_001))).rejects.toMatchObject({
      status: 400,
      type: 'malformed-request',
      message: expect.stringContaining('next.number is over 1000000, the most checkpoints a job may take'),
    });
    const cookie = await sessionCookie(t);
    const big = await fetch(new URL(`/cloister/v1/train/${JOB}/checkpoint`, b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', cookie },
      body: JSON.stringify({ prev: null, next: cp(1), padding: 'x'.repeat(5000) }),
    });
    expect(await problem(big)).toEqual({ status: 413, type: 'body-too-large' });
    expect(await t.checkpointLatest(JOB)).toBeNull();
  });

  it('a malformed or foreign receipt (400 bad-receipt, 413 over 1 MiB)', async () => {
    const t = await launch(b);
    const refused = async (body: Uint8Array, message: RegExp) =>
      expect(t.client.appendReceipt(JOB, body)).rejects.toMatchObject({
        status: 400,
        type: 'bad-receipt',
        message: expect.stringMatching(message),
      });
    await refused(new TextEncoder().encode('{not json'), /not JSON/);
    await refused(
      receipt({ payloadType: 'text/plain' }),
      /payloadType must be application\/vnd.in-toto\+json/,
    );
    await refused(receipt({ job: OTHER_JOB }), new RegExp(`for training job ${OTHER_JOB}, not ${JOB}`));
    await refused(receipt({ predicateType: 'https://slsa.dev/provenance/v1' }), /predicateType must be/);
    await refused(receipt({ trainer: { kind: 'magic' } }), /trainer.kind must be "builtin" or "command"/);
    // Well formed but not signed by a key bound into TEE evidence.
    await refused(receipt(), /the receipt does not verify/);
    // Signed in a TEE, then one byte of the payload changed.
    const env = JSON.parse(new TextDecoder().decode(await signedReceipt(t.attester)));
    const payload = Buffer.from(env.payload, 'base64');
    payload[payload.indexOf('tiny-lm')] ^= 1;
    env.payload = payload.toString('base64');
    await refused(new TextEncoder().encode(JSON.stringify(env)), /does not verify/);
    // Signed, but its recorded trainer does not digest to the trainerDigest it states (the full
    // training-receipt verification, not the envelope's alone).
    const facts = sampleFacts({
      manifest: { sha256: JOB, name: 'tiny-lm' },
      trainer: OTHER_TRAINER,
      trainerDigest: APPROVED,
      outputs: [{ file: 'model.gguf.sealed', sealedSha256: sha('sealed model'), recipients: [MODEL_URI] }],
    });
    const lying = await signTrainingReceipt(facts, await createAttestedSigner(t.attester, fromHex(JOB)));
    await refused(
      new TextEncoder().encode(JSON.stringify(lying)),
      /does not verify: predicate.trainerDigest is .* but the trainer it records digests to/,
    );
    const big = new TextEncoder().encode(
      JSON.stringify({ payloadType: 'x', payload: 'A'.repeat(1024 * 1024) }),
    );
    await expect(t.client.appendReceipt(JOB, big)).rejects.toMatchObject({
      status: 413,
      type: 'body-too-large',
    });
    expect((await logEntries(b)).filter((e) => e.kind === 'train-receipt')).toEqual([]);
  });
});

/** The session cookie of a client once it has attested (KbsClient keeps it to itself). */
async function sessionCookie(t: KbsClient): Promise<string> {
  await t.token();
  return (t as unknown as { session: { cookie: string } }).session.cookie;
}

describe('the checkpoint MAC key', () => {
  let keys: TestKeys;
  let b: TestBroker;
  beforeAll(async () => {
    keys = await testKeys();
    b = await testBroker({ devMode: true, db: 'memory:' }, { keys });
    await putModelKey(b);
  });
  afterAll(() => b.close());

  it('is 32 bytes per launch, HMAC-SHA-256(HKDF(master key, label), JCS{job, trainer, recipients}), the same from every session and replica', async () => {
    const key = await (await trainer(b)).trainKey(JOB);
    expect(key).toHaveLength(32);
    const master = Buffer.from(readFileSync(keys.masterKeyFile, 'utf8').trim(), 'base64');
    const sub = Buffer.from(
      hkdfSync('sha256', master, new Uint8Array(0), 'cloister-kbs train-checkpoint-mac v1', 32),
    );
    // Per launch configuration: the job, its trainer and its recipients (JCS).
    const launch = canonicalizeBytes({ job: JOB, trainer: APPROVED, recipients: [MODEL_URI] });
    expect(Buffer.from(key).toString('hex')).toBe(createHmac('sha256', sub).update(launch).digest('hex'));
    // Another session of the job, and another broker with the same master key (a replica, a restart).
    expect(await (await trainer(b)).trainKey(JOB)).toEqual(key);
    const replica = await testBroker({ devMode: true, db: 'memory:' }, { keys });
    await putModelKey(replica);
    try {
      expect(await (await trainer(replica)).trainKey(JOB)).toEqual(key);
    } finally {
      await replica.close();
    }
    // Another job, another key.
    expect(await (await trainer(b, OTHER_JOB)).trainKey(OTHER_JOB)).not.toEqual(key);
    // Never logged as a release: it is the job's own, not an owner's.
    expect((await logEntries(b)).filter((e) => e.kind === 'release')).toEqual([]);
  });
});

describe('checkReceiptEnvelope (the facts the broker records; signatures are checked apart)', () => {
  it("reads a command trainer's program and its digest, and the Statement's digest", async () => {
    const program = sha('python3');
    const command = {
      kind: 'command',
      argv: ['python3', 'train.py'],
      program: { path: '/usr/bin/python3', sha256: program },
      files: [],
    };
    const envelope = receipt({ trainer: command });
    const facts = await checkReceiptEnvelope(envelope, JOB);
    expect(facts).toEqual({
      job: JOB,
      sha256: statementSha(envelope),
      subjects: [{ name: 'model.gguf.sealed', sha256: sha('sealed model') }],
      trainer: { kind: 'command', name: '/usr/bin/python3', digest: digestOf(command) },
      outputs: [
        {
          file: 'model.gguf.sealed',
          sha256: sha('sealed model'),
          recipients: [MODEL_URI],
        },
      ],
    });
  });
});

describe('the identity of the TEE a receipt comes from', () => {
  const tdx = {
    mr_td: 'AA',
    rtmr0: '01',
    rtmr3: '03',
    mr_config_id: 'cc',
    report_data: '11',
    tcb_status: 'UpToDate',
  };
  it('compares identity claims only, hex in any case; one missing on either side differs', () => {
    expect(
      identityMismatch(tdx, { ...tdx, mr_td: 'aa', report_data: '22', tcb_status: 'OutOfDate' }),
    ).toEqual([]);
    expect(identityMismatch(tdx, { ...tdx, rtmr2: '04' })).toEqual(['rtmr2']);
    // RTMR3 is the runtime's to extend: a re-attested session may differ from the receipt key's evidence.
    expect(identityMismatch(tdx, { ...tdx, rtmr3: '04' })).toEqual([]);
    const { mr_config_id: _, ...without } = tdx;
    expect(identityMismatch(tdx, without)).toEqual(['mr_config_id']);
    expect(identityMismatch(without, tdx)).toEqual(['mr_config_id']);
    expect(identityMismatch({ measurement: 'ab', debug: false }, { measurement: 'ab', debug: true })).toEqual(
      ['debug'],
    );
    expect(
      identityMismatch({ mr_enclave: 'e1', mr_signer: 's' }, { mr_enclave: 'e1', mr_signer: 't' }),
    ).toEqual(['mr_signer']);
  });

  it("looks into Azure's hardware claims and boot PCRs", () => {
    const az = (m: string, pcr7: string, pcr10: string) => ({
      snp: { measurement: m, host_data: '00' },
      hcl: { user_data: 'x' },
      tpm: { nonce: 'n', pcrs: { '0': 'p0', '7': pcr7, '10': pcr10 } },
    });
    expect(identityMismatch(az('m1', 'a', 'x'), az('m1', 'a', 'y'))).toEqual([]);
    expect(identityMismatch(az('m1', 'a', 'x'), az('m2', 'b', 'x'))).toEqual([
      'snp.measurement',
      'tpm.pcrs.7',
    ]);
    expect(launchMeasurement('az-snp-vtpm', az('ab12', 'a', 'x'))).toBe('ab12');
  });

  it("exposes each kind's launch measurement as lower-case hex, '' when it has none", () => {
    expect(launchMeasurement('tdx', tdx)).toBe('aa');
    expect(launchMeasurement('snp', { measurement: 'AB' })).toBe('ab');
    expect(launchMeasurement('sgx', { mr_enclave: 'e1' })).toBe('e1');
    expect(launchMeasurement('sample', { measurement: IMAGE })).toBe(IMAGE);
    expect(launchMeasurement('az-tdx-vtpm', { tdx: {} })).toBe('');
    expect(launchMeasurement('nvidia', { measurement: 'ab' })).toBe('');
  });
});
