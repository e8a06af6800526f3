/** A training receipt's facts and a signed receipt from the INSECURE sample TEE, for tests. */
import { createHash } from 'node:crypto';
import { createAttestedSigner } from '../../src/tee/attested-receipt.js';
import { InsecureSampleAttester, sampleHostData } from '../../src/tee/evidence/sample.js';
import { signTrainingReceipt, type TrainingFacts } from '../../src/tee/training-receipt.js';
import { fromHex } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import type { DsseEnvelope } from '../../src/wire/dsse.js';
import { trainInitData } from '../../src/wire/kbs.js';

export const JOB = '5e'.repeat(32);
const h = (b: string) => b.repeat(32);

export function sampleFacts(over: Partial<TrainingFacts> = {}): TrainingFacts {
  const facts: Omit<TrainingFacts, 'trainerDigest' | 'recipients'> = {
    manifest: { sha256: JOB, name: 'tiny-lm' },
    inputs: [{ name: 'corpus', sealedSha256: h('01'), kbs: 'kbs:///owner/data/corpus' }],
    trainer: {
      kind: 'builtin',
      name: 'llama',
      software: { name: 'cloister', version: '0.0.0-test', digest: `sha256:${h('02')}` },
    },
    hyperparameters: { steps: 20, batch: 4, lr: 0.003 },
    seed: 42,
    checkpoints: [
      { number: 1, step: 10, sealedSha256: h('03'), prev: null },
      { number: 2, step: 20, sealedSha256: h('04'), prev: h('03') },
    ],
    metrics: { loss: 2.5, heldout_loss: 2.75 },
    outputs: [{ file: 'model.gguf.sealed', sealedSha256: h('05'), recipients: ['kbs:///owner/model/key'] }],
    tee: { kind: 'sample', insecure: true },
    startedAt: '2025-09-01T10:00:00.000Z',
    endedAt: '2025-09-01T10:05:30.000Z',
    ...over,
  };
  const digest = createHash('sha256').update(canonicalizeBytes(facts.trainer)).digest('hex');
  return {
    ...facts,
    trainerDigest: over.trainerDigest ?? `sha256:${digest}`,
    recipients: over.recipients ?? [...new Set(facts.outputs.flatMap((o) => o.recipients))],
  };
}

/** A receipt signed by a fresh sample-TEE key bound to the facts' manifest. */
export async function sampleReceipt(facts = sampleFacts(), ear: string | null = null): Promise<DsseEnvelope> {
  const signer = await createAttestedSigner(await launchedFor(facts), fromHex(facts.manifest.sha256));
  return signTrainingReceipt(facts, signer, { ear });
}

/** A sample TEE launched for the facts' job: its host_data holds the digest of the job's init-data. */
export async function launchedFor(facts: TrainingFacts): Promise<InsecureSampleAttester> {
  const body = trainInitData(facts.manifest.sha256, facts.trainerDigest, facts.recipients);
  return new InsecureSampleAttester({ hostData: await sampleHostData({ format: 'json', body }) });
}
