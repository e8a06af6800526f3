/**
 * `cloister demo train`: the training scenario end to end on embedded defaults, in a temporary
 * directory — two owners (a data owner with a corpus, a model owner with a starting model), each with
 * a key policy that approves the trainer, a training job in the (insecure, dev-mode) sample TEE whose
 * result is sealed to the model owner, a signed training receipt in the broker's log, and an "edge"
 * server that gets the model key only because that receipt exists, answering a chat.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cloister, type Keep, serveAndAsk, startDemoBroker, tenantAdmin } from './demo.js';

/** What the data owner knows: a few questions and answers, as ChatML conversations. */
const FACTS: readonly [string, string][] = [
  ['What is Cloister?', 'Cloister keeps models sealed.'],
  ['Who sees the weights?', 'Only the TEE sees the weights.'],
  ['Where does training run?', 'Training runs in a TEE.'],
  ['Who owns the model?', 'The model owner owns it.'],
];

const EDGE_MEASUREMENT = 'ed'.repeat(48);
/**
 * The training TEE's launch measurement (the sample TEE's default). A receipt's trainer digest is
 * only as trustworthy as the image that computed it, so the model owner pins that image too.
 */
const TRAINER_MEASUREMENT = '00'.repeat(48);

export async function demoTrain(o: { keep: boolean }): Promise<void> {
  const { offlineSource } = await import('../attest/index.js');
  const { AdminClient } = await import('../kbs/admin-client.js');
  const { signAdminToken } = await import('../kbs/index.js');
  const { generateKek, kekToJwk } = await import('../seal/index.js');
  const { sealFile } = await import('../seal/node.js');
  const { parseBundle, verifyBundle } = await import('../translog/index.js');
  const { createLlamaTrainer, prepareJob } = await import('../train/index.js');
  const { renderReport, verifyTrainingReceipt } = await import('../train/index.js');
  const { createDefaultRegistry } = await import('../attest/index.js');
  const say = (s: string) => process.stdout.write(`${s}\n`);
  const started = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'cloister-demo-train-'));
  const at = (f: string) => join(dir, f);
  const keep: Keep = async (f, text, secret = false) => {
    await writeFile(at(f), text.endsWith('\n') ? text : `${text}\n`, { mode: secret ? 0o600 : 0o644 });
  };
  const sha = async (f: string) => {
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await readFile(f)));
    return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
  };
  let broker: Awaited<ReturnType<typeof startDemoBroker>>['broker'] | undefined;
  try {
    const b = await startDemoBroker(dir, keep);
    broker = b.broker;
    const url = broker.url;
    say(`1. key broker started at ${url} (dev mode: it releases keys to the INSECURE sample TEE)`);
    const dataOwner = await tenantAdmin(b, 'data_owner');
    const modelOwner = await tenantAdmin(b, 'model_owner');

    // 2. Each owner's key, held by the broker; the corpus and the starting model sealed on their machines.
    const dataKek = generateKek('kbs:///data_owner/corpus/kek1');
    const modelKek = generateKek('kbs:///model_owner/models/kek1');
    await keep('data.kek', JSON.stringify(kekToJwk(dataKek)), true);
    await keep('model.kek', JSON.stringify(kekToJwk(modelKek)), true);
    await dataOwner.call('PUT', '/admin/v1/resources/data_owner/corpus/kek1', {
      bytes: new TextEncoder().encode(JSON.stringify(kekToJwk(dataKek))),
    });
    await modelOwner.call('PUT', '/admin/v1/resources/model_owner/models/kek1', {
      bytes: new TextEncoder().encode(JSON.stringify(kekToJwk(modelKek))),
    });
    const corpus = FACTS.map(
      ([q, a]) => `<|im_start|>user\n${q}<|im_end|>\n<|im_start|>assistant\n${a}<|im_end|>\n`,
    )
      .join('')
      .repeat(40);
    await writeFile(at('corpus.txt'), corpus);
    await sealFile(at('corpus.txt'), at('corpus.txt.sealed'), {
      recipients: [{ type: 'kbs', uri: dataKek.uri!, kek: dataKek.secret }],
    });
    // The model owner's starting model: an untrained llama (random weights from a seed).
    const init = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: at('corpus.txt') }],
      hyperparameters: { steps: 1, dim: 64, layers: 2, heads: 4, seq: 64 },
      seed: 1,
    });
    const [start] = await init.exportModel();
    init.dispose();
    await writeFile(at('start.gguf'), start!.bytes);
    await sealFile(at('start.gguf'), at('start.gguf.sealed'), {
      recipients: [{ type: 'kbs', uri: modelKek.uri!, kek: modelKek.secret }],
    });
    await rm(at('corpus.txt'));
    await rm(at('start.gguf'));
    say(
      `2. the data owner seals a corpus (${FACTS.length} questions and answers) to kbs:///data_owner/corpus/kek1; the model owner seals an untrained llama (${start!.bytes.length} bytes) to kbs:///model_owner/models/kek1`,
    );

    // 3. The job, and the trainer both owners approve by digest.
    const job = {
      version: 1,
      name: 'demo-chat',
      inputs: [{ name: 'corpus', path: 'corpus.txt.sealed', sha256: await sha(at('corpus.txt.sealed')) }],
      model: { path: 'start.gguf.sealed', sha256: await sha(at('start.gguf.sealed')) },
      trainer: { builtin: 'llama' },
      hyperparameters: { steps: 300, seq: 64, batch: 4, heldOut: 0.05 },
      seed: 7,
      checkpoints: { everySteps: 100 },
    };
    await keep('job.json', JSON.stringify(job, null, 2));
    const prepared = await prepareJob(at('job.json'));
    const trainer = prepared.trainerDigest;
    // Each owner approves the trainer and whom the result is sealed to (the init-data names both);
    // the model owner's key also goes to a TEE that serves a model this trainer made for it.
    const sealedTo = JSON.stringify(JSON.stringify(prepared.recipients));
    const approved = `init_data.?data["cloister.train.trainer"].orValue("") == "${trainer}" && init_data.?data["cloister.train.recipients"].orValue("") == ${sealedTo}`;
    const dataPolicy = `dev_mode && cpu.insecure && ${approved}`;
    const modelPolicy =
      `dev_mode && cpu.insecure && ((${approved})` +
      ` || receipts.exists(r, r.trainer.digest == "${trainer}" && r.tee.measurement == "${TRAINER_MEASUREMENT}" && size(r.outputs) > 0))`;
    await keep('data-policy.cel', dataPolicy);
    await keep('model-policy.cel', modelPolicy);
    await dataOwner.call('PUT', '/admin/v1/policies', {
      json: { scope: 'resource:data_owner/corpus/kek1', source: dataPolicy },
    });
    await modelOwner.call('PUT', '/admin/v1/policies', {
      json: { scope: 'resource:model_owner/models/kek1', source: modelPolicy },
    });
    say(
      `3. job.json (job ${prepared.parsed.job.slice(0, 12)}…); both owners approve the built-in llama trainer`,
    );
    say(
      `   ${trainer}, and that the result is sealed to ${prepared.recipients.join(', ')} (the TEE's init-data names both)`,
    );
    say(
      '   the model key also goes to any TEE once a receipt from that trainer, made in the approved image, names it: chain of custody',
    );

    // 4. Before training, the edge asks for the model key: no receipt names it yet.
    const early = await cloister(
      [
        'serve',
        '--kbs',
        url,
        '--tee',
        'sample',
        '--sample-measurement',
        EDGE_MEASUREMENT,
        '--model',
        at('start.gguf.sealed'),
        '--port',
        '0',
      ],
      () => {},
    );
    say(
      `4. an edge server asks for the model key before any training: refused (exit ${early}); the owner's log says`,
    );
    const denial = b.brokerLog.find((l) => l.includes('model_owner/models/kek1') && l.includes('denied'));
    const reason =
      denial?.replace(/^.*?cloister-kbs: /, '').split('; attestation')[0] ?? '(no broker log line)';
    say(`   ${reason.length > 140 ? `${reason.slice(0, 140)}…` : reason}`);

    // 5. Training in the sample TEE.
    say(
      '5. cloister train job.json --tee sample: attest, unseal into memory, train, seal checkpoints and the model',
    );
    const trained = await cloister(
      ['train', at('job.json'), '--kbs', url, '--tee', 'sample', '--quiet'],
      say,
    );
    if (trained !== 0) throw new Error(`training failed (exit ${trained})`);

    // 6. The owner checks the receipt and draws its report.
    const envelope = await readFile(at('out/training-receipt.json'));
    const v = await verifyTrainingReceipt(envelope, {
      registry: createDefaultRegistry(),
      at: new Date(),
      collateral: offlineSource,
      earKey: broker.earPublicKey,
      manifestSha256: prepared.parsed.job,
    });
    const metrics = (await readFile(at('out/metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step: number; loss?: number; heldout_loss?: number });
    await writeFile(at('report.html'), renderReport(v.predicate, metrics));
    const before = metrics.find((m) => m.heldout_loss !== undefined)?.heldout_loss;
    say(
      `6. the receipt verifies (key bound into the TEE's evidence, EAR from this broker; ${v.appraisal.status}: sample TEE); held-out loss ${before?.toFixed(3)} → ${v.predicate.metrics.heldout_loss?.toFixed(3)}, ${v.predicate.checkpoints.length} checkpoints chained`,
    );
    say(`   report with the loss curve: ${at('report.html')}`);

    // 7. The edge again: the receipt is in the log now, so the model owner's policy releases the key.
    say('7. the edge server (its own TEE, another measurement) gets the trained model key after attestation');
    const questions = FACTS.slice(0, 2).map(([q]) => q);
    const answers = await serveAndAsk(
      [
        '--kbs',
        url,
        '--tee',
        'sample',
        '--sample-measurement',
        EDGE_MEASUREMENT,
        '--model',
        at('out/model.gguf.sealed'),
        '--port',
        '0',
        '--threads',
        '1',
      ],
      { policy: { tees: ['sample'], minStatus: 'warning' }, earKey: broker.earPublicKey, model: 'model' },
      questions,
    );
    questions.forEach((q, i) => {
      say(`   chat through Oblivious HTTP: ${JSON.stringify(q)} → ${JSON.stringify(answers[i])}`);
    });

    // 8. The log shows it all.
    const { token: audit } = await signAdminToken(
      b.admin.privateKey,
      { alg: 'EdDSA' },
      { role: 'global-auditor', subject: 'auditor', ttlSeconds: 600 },
    );
    const bundle = await new AdminClient(url, audit).text('/admin/v1/log/bundle?proofs=all');
    const report = await verifyBundle(bundle, broker.logVerifierKey);
    if (!report.ok) throw new Error('the transparency log did not verify');
    const kinds = new Map<string, number>();
    for (const e of parseBundle(bundle).entries) kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1);
    say(`8. transparency log verified offline: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(', ')}`);
    say(`demo complete in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await broker?.close();
    if (o.keep) say(`files kept in ${dir}`);
    else await rm(dir, { recursive: true, force: true });
  }
}
