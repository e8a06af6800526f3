/**
 * The broker's side of confidential training over HTTP: checkpoint compare-and-set (first checkpoint,
 * advances, rollback and fork refused with what the broker holds, a retried advance), training
 * receipts appended to the transparency log, and a release policy that requires a receipt from an
 * approved trainer. Only an attested session whose init-data names the job may use them. On SQLite,
 * memory and PostgreSQL (CLOISTER_TEST_PG=skip leaves that out).
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkReceiptEnvelope } from '../../src/kbs/train.js';
import { createAttestedSigner } from '../../src/tee/attested-receipt.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/index.js';
import { type CheckpointRef, KbsClient, KbsClientError } from '../../src/tee/kbs-client.js';
import { signTrainingReceipt, type TrainerRecord } from '../../src/tee/training-receipt.js';
import { bs, fromHex } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import { sampleFacts } from '../train/receipt-fixture.js';
import { PG_ENABLED, pgSchema, sampleAttester, type TestBroker, testBroker } from './helpers.js';

const sha = (s: string | Uint8Array) => createHash('sha256').update(s).digest('hex');
const MANIFEST = '{"version":1,"name":"tiny-lm","trainer":{"builtin":"llama"}}';
const JOB = sha(MANIFEST);
const OTHER_JOB = sha('another manifest');
const APPROVED_TRAINER = {
  kind: 'builtin',
  name: 'llama',
  software: { name: 'cloister', version: '0.1.0', digest: `sha256:${sha('cloister build')}` },
} as const;
/** A trainer's digest as init-data, receipts and policies name it: sha256 of JCS(trainer record). */
const digestOf = (t: unknown) => `sha256:${sha(canonicalizeBytes(t))}`;
const APPROVED = digestOf(APPROVED_TRAINER);
const MODEL_KEY = 'owner/model/key';
const cp = (number: number, salt = ''): CheckpointRef => ({
  number,
  sha256: sha(`checkpoint ${number}${salt}`),
});

/** The CoCo init-data a training TEE is launched with (JSON, sha256: the sample TEE's host_data). */
const initData = (job: string) =>
  JSON.stringify({ version: '0.1.0', algorithm: 'sha256', data: { 'cloister.train.manifest': job } });

/** A sample TEE launched for `job` (its host_data holds the init-data digest), sending that init-data. */
async function trainer(b: TestBroker, job = JOB): Promise<KbsClient> {
  const body = initData(job);
  return new KbsClient({
    url: b.url,
    attester: await sampleAttester({ hostData: sha(body) }),
    initData: { format: 'json', body },
  });
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
          recipients: o.recipients ?? [`kbs:///${MODEL_KEY}`, 'hpke:owner-key'],
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

/** A training receipt signed in the sample TEE by a key bound to `job`, as `cloister train` makes it. */
async function signedReceipt(
  o: { trainer?: TrainerRecord; recipients?: string[] } = {},
): Promise<Uint8Array> {
  const output = sha('sealed model');
  const facts = sampleFacts({
    manifest: { sha256: JOB, name: 'tiny-lm' },
    trainer: o.trainer ?? APPROVED_TRAINER,
    outputs: [
      {
        file: 'model.gguf.sealed',
        sealedSha256: output,
        recipients: o.recipients ?? [`kbs:///${MODEL_KEY}`, 'hpke:owner-key'],
      },
    ],
  });
  const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
  return new TextEncoder().encode(JSON.stringify(await signTrainingReceipt(facts, signer)));
}

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
      const admin = await b.admin();
      const secret = new TextEncoder().encode('the model key');
      expect((await b.call('PUT', `/admin/v1/resources/${MODEL_KEY}`, admin, secret)).status).toBe(201);
      // Only a model trained by the approved trainer (a receipt naming this key) gets the key.
      const set = await b.call('PUT', '/admin/v1/policies', admin, {
        scope: `resource:${MODEL_KEY}`,
        source: `receipts.exists(r, r.trainer.digest == "${APPROVED}" && size(r.outputs) > 0)`,
      });
      expect(set.status).toBe(200);
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
        const e = await t.checkpointAdvance(JOB, prev, next).then(
          () => undefined,
          (err: unknown) => err,
        );
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

    it('releases the model key only once a receipt from the approved trainer names it', async () => {
      // The edge: another TEE, no init-data; the policy alone decides.
      const edge = new KbsClient({ url: b.url, attester: await sampleAttester() });
      await expect(edge.getResource(MODEL_KEY)).rejects.toMatchObject({ status: 403, type: 'denied' });
      let denial = (await logEntries(b)).at(-1)!;
      expect(denial).toMatchObject({ kind: 'denial', subject: MODEL_KEY });
      expect(JSON.stringify(denial.details.reasons)).toMatch(/receipts\.exists/);

      const t = await trainer(b);
      // A receipt from another trainer, and one sealed to another key, release nothing.
      await t.appendReceipt(
        JOB,
        await signedReceipt({
          trainer: {
            kind: 'builtin',
            name: 'llama',
            software: { name: 'x', version: '1', digest: `sha256:${sha('unknown')}` },
          },
        }),
      );
      await t.appendReceipt(JOB, await signedReceipt({ recipients: ['kbs:///owner/other/key'] }));
      await expect(edge.getResource(MODEL_KEY)).rejects.toMatchObject({ status: 403 });
      denial = (await logEntries(b)).at(-1)!;
      expect(denial.kind).toBe('denial');

      const envelope = await signedReceipt();
      const appended = await t.appendReceipt(JOB, envelope);
      expect(appended.sha256).toBe(sha(envelope));
      const entries = await logEntries(b);
      const entry = entries[appended.logIndex]!;
      expect(entry).toMatchObject({
        kind: 'train-receipt',
        subject: `train:${JOB}`,
        details: {
          job: JOB,
          sha256: sha(envelope),
          subjects: [{ name: 'model.gguf.sealed', sha256: sha('sealed model') }],
          trainer: { kind: 'builtin', name: 'llama', digest: APPROVED },
          recipients: [`kbs:///${MODEL_KEY}`, 'hpke:owner-key'],
          tee: { kind: 'sample', insecure: true, status: 'warning' },
        },
      });
      // The same receipt again is the same record, not a second entry.
      expect(await t.appendReceipt(JOB, envelope)).toEqual(appended);
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

  it('a session whose init-data names no job or another job (403), with the reason', async () => {
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
    expect(await (await trainer(b)).checkpointLatest(JOB)).toBeNull();
  });

  it('a job id that is not 64 lower-case hex digits (400)', async () => {
    const t = await trainer(b);
    for (const job of [JOB.toUpperCase(), JOB.slice(1), 'tiny-lm', `${JOB}0`]) {
      await expect(t.checkpointLatest(job), job).rejects.toMatchObject({ status: 400, type: 'bad-job' });
    }
  });

  it('a malformed advance (400) and a malformed or foreign receipt (400 bad-receipt, 413 over 1 MiB)', async () => {
    const t = await trainer(b);
    await expect(t.checkpointAdvance(JOB, null, { number: 0, sha256: cp(1).sha256 })).rejects.toMatchObject({
      status: 400,
      type: 'malformed-request',
    });
    await expect(t.checkpointAdvance(JOB, null, { number: 1, sha256: 'AB' })).rejects.toMatchObject({
      status: 400,
      type: 'malformed-request',
    });
    const refused = async (body: Uint8Array, message: RegExp) =>
      expect(t.appendReceipt(JOB, body)).rejects.toMatchObject({
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
    const env = JSON.parse(new TextDecoder().decode(await signedReceipt()));
    const payload = Buffer.from(env.payload, 'base64');
    payload[payload.indexOf('tiny-lm')] ^= 1;
    env.payload = payload.toString('base64');
    await refused(new TextEncoder().encode(JSON.stringify(env)), /does not verify/);
    const big = new TextEncoder().encode(
      JSON.stringify({ payloadType: 'x', payload: 'A'.repeat(1024 * 1024) }),
    );
    await expect(t.appendReceipt(JOB, big)).rejects.toMatchObject({ status: 413, type: 'body-too-large' });
    expect((await logEntries(b)).filter((e) => e.kind === 'train-receipt')).toEqual([]);
  });
});

describe('checkReceiptEnvelope (the facts the broker records; signatures are checked apart)', () => {
  it("reads a command trainer's program and its digest", async () => {
    const program = sha('python3');
    const command = {
      kind: 'command',
      argv: ['python3', 'train.py'],
      program: { path: '/usr/bin/python3', sha256: program },
      files: [],
    };
    const facts = await checkReceiptEnvelope(receipt({ trainer: command }), JOB);
    expect(facts).toEqual({
      job: JOB,
      subjects: [{ name: 'model.gguf.sealed', sha256: sha('sealed model') }],
      trainer: { kind: 'command', name: '/usr/bin/python3', digest: digestOf(command) },
      outputs: [
        {
          file: 'model.gguf.sealed',
          sha256: sha('sealed model'),
          recipients: [`kbs:///${MODEL_KEY}`, 'hpke:owner-key'],
        },
      ],
    });
  });
});
