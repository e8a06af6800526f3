import { describe, expect, it } from 'vitest';
import { createDefaultRegistry, issueEar, offlineSource, sampleVerifier } from '../../src/attest/index.js';
import { createAttestedSigner } from '../../src/tee/attested-receipt.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import {
  buildTrainingStatement,
  checkFacts,
  signTrainingReceipt,
  TRAINING_PREDICATE_TYPE,
  verifyTrainingReceipt,
} from '../../src/tee/training-receipt.js';
import { fromBase64, fromHex, utf8 } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import { type DsseEnvelope, es256Signer, IN_TOTO_PAYLOAD_TYPE, signEnvelope } from '../../src/wire/dsse.js';
import { JOB, launchedFor, sampleFacts, sampleReceipt } from '../train/receipt-fixture.js';

const options = () => ({
  registry: createDefaultRegistry(),
  at: new Date('2025-09-01T10:05:30.000Z'),
  collateral: { get: async () => undefined },
});

/** A receipt whose statement was edited and re-signed by the holder of the receipt key (worst case). */
async function forge(edit: (s: { subject: unknown[]; predicate: Record<string, unknown> }) => void) {
  const signer = await createAttestedSigner(await launchedFor(sampleFacts()), fromHex(JOB));
  const env = await signTrainingReceipt(sampleFacts(), signer);
  const s = JSON.parse(utf8.decode(fromBase64(env.payload)));
  edit(s);
  return signEnvelope(IN_TOTO_PAYLOAD_TYPE, canonicalizeBytes(s), [
    es256Signer(signer.privateKey, signer.keyid),
  ]);
}

describe('training receipts', () => {
  it('the subjects are the sealed outputs', () => {
    const s = buildTrainingStatement(sampleFacts());
    expect(s.predicateType).toBe(TRAINING_PREDICATE_TYPE);
    expect(s.subject).toEqual([{ name: 'model.gguf.sealed', digest: { sha256: '05'.repeat(32) } }]);
  });

  it('a signed receipt verifies (sample TEE: insecure) and gives back its predicate', async () => {
    const env = await sampleReceipt();
    const v = await verifyTrainingReceipt(JSON.stringify(env), { ...options(), manifestSha256: JOB });
    expect(v.appraisal).toMatchObject({ kind: 'sample', insecure: true });
    expect(v.predicate).toMatchObject({ ...sampleFacts(), attestation: { context: JOB, ear: null } });
    expect(v.statement.predicateType).toBe(TRAINING_PREDICATE_TYPE);
  });

  it('refuses a receipt for another job than expected, and a key bound to another job', async () => {
    await expect(
      verifyTrainingReceipt(await sampleReceipt(), { ...options(), manifestSha256: 'ee'.repeat(32) }),
    ).rejects.toMatchObject({ code: 'receipt-context' });
    const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex('ee'.repeat(32)));
    await expect(signTrainingReceipt(sampleFacts(), signer)).rejects.toMatchObject({
      code: 'receipt-manifest',
    });
    const forged = await forge((s) => {
      (s.predicate.manifest as { sha256: string }).sha256 = 'ee'.repeat(32);
    });
    await expect(verifyTrainingReceipt(forged, options())).rejects.toMatchObject({
      code: 'receipt-manifest',
    });
  });

  it('refuses subjects that are not the outputs', async () => {
    const forged = await forge((s) => {
      s.subject = [{ name: 'model.gguf.sealed', digest: { sha256: '06'.repeat(32) } }];
    });
    await expect(verifyTrainingReceipt(forged, options())).rejects.toMatchObject({
      code: 'receipt-subjects',
    });
    const extra = await forge((s) => {
      s.subject.push({ name: 'other', digest: { sha256: '07'.repeat(32) } });
    });
    await expect(verifyTrainingReceipt(extra, options())).rejects.toMatchObject({ code: 'receipt-subjects' });
  });

  it('refuses a checkpoint chain with a gap, a wrong predecessor or a step going back', async () => {
    const cp = sampleFacts().checkpoints;
    const cases = [
      [{ ...cp[0]!, number: 2 }],
      [cp[0]!, { ...cp[1]!, number: 3 }],
      [cp[0]!, { ...cp[1]!, prev: '09'.repeat(32) }],
      [{ ...cp[0]!, prev: '09'.repeat(32) }],
      [cp[0]!, { ...cp[1]!, step: 5 }],
    ];
    for (const checkpoints of cases)
      expect(() => checkFacts(sampleFacts({ checkpoints })), JSON.stringify(checkpoints)).toThrow(
        expect.objectContaining({ code: 'receipt-checkpoints' }),
      );
    expect(() => checkFacts(sampleFacts({ checkpoints: [] }))).not.toThrow();
    const forged = await forge((s) => {
      (s.predicate.checkpoints as { prev: string | null }[])[1]!.prev = null;
    });
    await expect(verifyTrainingReceipt(forged, options())).rejects.toMatchObject({
      code: 'receipt-checkpoints',
    });
  });

  it('names a malformed predicate member (receipt-shape)', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ manifest: { sha256: 'xyz', name: 'a' } }, /manifest\.sha256/],
      [{ seed: 1.5 }, /seed/],
      [{ outputs: [] }, /outputs must be a non-empty list/],
      [{ trainer: { kind: 'magic' } }, /trainer\.kind/],
      [{ trainer: { kind: 'command', argv: [], program: {}, files: [] } }, /trainer\.argv/],
      [{ metrics: { loss: 'low' } }, /metrics\.loss/],
      [{ tee: { kind: 'sample' } }, /tee\.insecure/],
      [{ endedAt: 'yesterday' }, /endedAt/],
    ];
    for (const [over, message] of bad)
      expect(() => checkFacts({ ...sampleFacts(), ...over }), String(message)).toThrow(message);
    expect(() =>
      checkFacts(
        sampleFacts({
          trainer: {
            kind: 'command',
            argv: ['python3', 'train.py'],
            program: { path: '/usr/bin/python3', sha256: '0a'.repeat(32) },
            files: [{ path: 'train.py', sha256: '0b'.repeat(32) }],
          },
        }),
      ),
    ).not.toThrow();
  });

  it("refuses a receipt whose TEE is not its evidence's", async () => {
    const env = await sampleReceipt(sampleFacts({ tee: { kind: 'tdx', insecure: false } }));
    await expect(verifyTrainingReceipt(env, options())).rejects.toMatchObject({ code: 'receipt-tee' });
  });

  it("checks the broker's EAR token while the job ran, and that its init-data names this job", async () => {
    const signer = await createAttestedSigner(await launchedFor(sampleFacts()), fromHex(JOB));
    const appraisal = await sampleVerifier.appraiseEvidence(fromBase64(signer.attestation.evidence), {
      at: new Date(),
      collateral: offlineSource,
    });
    const broker = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const facts = sampleFacts();
    // Issued at the start of a job that ran three hours: the token (one hour) has expired by the end.
    const long = { ...facts, endedAt: '2025-09-01T13:00:00.000Z' };
    const ear = (job: string, issuedAt = new Date(facts.startedAt)) =>
      issueEar(
        { cpu0: appraisal },
        {
          signingKey: broker.privateKey,
          issuedAt,
          extraClaims: { 'cloister.init-data': { data: { 'cloister.train.manifest': job } } },
        },
      );
    const at = new Date(long.endedAt);
    const good = await signTrainingReceipt(long, signer, { ear: await ear(JOB) });
    const v = await verifyTrainingReceipt(good, { ...options(), at, earKey: broker.publicKey });
    expect(v.ear?.status).toBe(appraisal.status);
    const other = await signTrainingReceipt(long, signer, { ear: await ear('ee'.repeat(32)) });
    await expect(
      verifyTrainingReceipt(other, { ...options(), at, earKey: broker.publicKey }),
    ).rejects.toMatchObject({
      code: 'receipt-ear-job',
    });
    // A token from a day before the job had expired while it ran.
    const stale = await signTrainingReceipt(long, signer, {
      ear: await ear(JOB, new Date('2025-08-31T10:00:00.000Z')),
    });
    await expect(
      verifyTrainingReceipt(stale, { ...options(), at, earKey: broker.publicKey }),
    ).rejects.toMatchObject({
      code: 'ear-expired',
    });
  });

  it('refuses a receipt whose evidence was not launched with this job’s init-data (job, trainer, recipients)', async () => {
    const facts = sampleFacts();
    const elsewhere = await createAttestedSigner(new InsecureSampleAttester(), fromHex(JOB));
    await expect(
      verifyTrainingReceipt(await signTrainingReceipt(facts, elsewhere), options()),
    ).rejects.toMatchObject({ code: 'receipt-init-data' });
    // Launched for the job sealing to someone else: the evidence names other recipients.
    const other = await launchedFor({ ...facts, recipients: ['kbs:///thief/key/k'] });
    const signer = await createAttestedSigner(other, fromHex(JOB));
    await expect(
      verifyTrainingReceipt(await signTrainingReceipt(facts, signer), options()),
    ).rejects.toMatchObject({ code: 'receipt-init-data' });
  });

  it('refuses another predicate type', async () => {
    const forged = await forge((s) => {
      (s as { predicateType?: string }).predicateType = 'https://slsa.dev/provenance/v1';
    });
    await expect(verifyTrainingReceipt(forged as DsseEnvelope, options())).rejects.toMatchObject({
      code: 'receipt-predicate-type',
    });
  });
});
