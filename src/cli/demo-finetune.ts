/**
 * `cloister demo finetune`: confidential fine-tuning end to end on embedded defaults, in a temporary
 * directory. Two owners, each with their own key broker: a model vendor whose small general chat
 * model is sealed to its key, and a company (an IT help desk) whose tickets are sealed to its key. The
 * built-in LoRA trainer tunes the vendor's model on the tickets in the (insecure, dev-mode) sample
 * TEE: the vendor's policy releases the base only to the approved trainer in a job whose only output
 * is an adapter (a job asking for the merged model is refused first); the company's releases its
 * tickets to the same trainer. The adapter is sealed to the company alone. Then an edge server gets
 * the base from the vendor's broker and the adapter from the company's, and answers through the
 * verifying client: the base alone, then base + adapter, pinned by digest.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AdminClient } from '../kbs/admin-client.js';
import { cloister, type Keep, serveAndAsk, startDemoBroker, tenantAdmin } from './demo.js';

/** The vendor's general model knows how to chat, and says so when it does not know. */
const GENERAL: readonly [string, string][] = [
  ['Hello!', 'Hello! How can I help you today?'],
  ['Who are you?', 'I am a small assistant.'],
  ['Thank you.', 'You are welcome.'],
  ['Can you help me?', 'Yes, please ask your question.'],
  ...[
    'Where is the office?',
    'How do I fix my laptop?',
    'Why is my screen black?',
    'What is the door code?',
    'How do I get a new badge?',
    'My mouse does not work.',
    'Who runs the IT desk?',
    'Where do I park?',
  ].map((q): [string, string] => [q, 'I do not know that, sorry.']),
];

/** The company's private help-desk knowledge: each answer with several phrasings of its question. */
const TICKETS: readonly [string[], string][] = [
  [
    [
      'How do I reset my password?',
      'I forgot my password.',
      'Password reset please.',
      'How can I change my password?',
    ],
    'Open id.acme.lan and choose Reset.',
  ],
  [
    ['The VPN does not connect.', 'VPN is broken.', 'How do I fix the VPN?', 'I cannot reach the VPN.'],
    'Restart WireGuard, then call 4410.',
  ],
  [
    [
      'My printer is jammed.',
      'The printer does not print.',
      'How do I fix the printer?',
      'Printer error on floor 3.',
    ],
    'Use the printer in room 3.12.',
  ],
  [
    ['What is the wifi password?', 'How do I join the wifi?', 'Wifi login please.', 'Which wifi do I use?'],
    'Join AcmeStaff with your badge id.',
  ],
];

/** The measurement of the edge TEE that serves base + adapter (sample TEE). */
const EDGE_MEASUREMENT = 'ed'.repeat(48);

export async function demoFinetune(o: { keep: boolean }): Promise<void> {
  const { offlineSource } = await import('../attest/index.js');
  const { generateKek, kekToJwk } = await import('../seal/index.js');
  const { sealFile } = await import('../seal/node.js');
  const { createLlamaTrainer, prepareJob, verifyTrainingReceipt } = await import('../train/index.js');
  const { createDefaultRegistry } = await import('../attest/index.js');
  const say = (s: string) => process.stdout.write(`${s}\n`);
  const started = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'cloister-demo-finetune-'));
  const at = (f: string) => join(dir, f);
  const keeper =
    (sub: string): Keep =>
    async (f, text, secret = false) => {
      await writeFile(join(dir, sub, f), text.endsWith('\n') ? text : `${text}\n`, {
        mode: secret ? 0o600 : 0o644,
      });
    };
  const keep = keeper('');
  const sha = async (f: string) => {
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', await readFile(f)));
    return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
  };
  const brokers: { close(): Promise<void> }[] = [];
  try {
    // 1. Two brokers: each owner keeps its keys and policies with its own.
    await mkdir(at('vendor-kbs'));
    await mkdir(at('helpdesk-kbs'));
    const v = await startDemoBroker(at('vendor-kbs'), keeper('vendor-kbs'));
    brokers.push(v.broker);
    const c = await startDemoBroker(at('helpdesk-kbs'), keeper('helpdesk-kbs'));
    brokers.push(c.broker);
    say(`1. the vendor's key broker at ${v.broker.url}, the help desk's at ${c.broker.url}`);
    say('   (dev mode: they release keys to the INSECURE sample TEE)');
    const vendor = await tenantAdmin(v, 'vendor');
    const helpdesk = await tenantAdmin(c, 'helpdesk');
    const put = async (admin: AdminClient, uri: string, f: string) => {
      const k = generateKek(uri);
      await keep(f, JSON.stringify(kekToJwk(k)), true);
      await admin.call('PUT', `/admin/v1/resources/${uri.slice('kbs:///'.length)}`, {
        bytes: new TextEncoder().encode(JSON.stringify(kekToJwk(k))),
      });
      return k;
    };
    const baseKek = await put(vendor, 'kbs:///vendor/models/kek1', 'base.kek');
    const dataKek = await put(helpdesk, 'kbs:///helpdesk/tickets/kek1', 'tickets.kek');
    await put(helpdesk, 'kbs:///helpdesk/adapters/kek1', 'adapter.kek');

    // 2. The vendor's general model, trained on its own machine and sealed to its key.
    const chat = (q: string, a: string) =>
      `<|im_start|>user\n${q}<|im_end|>\n<|im_start|>assistant\n${a}<|im_end|>\n`;
    await writeFile(
      at('general.txt'),
      GENERAL.map(([q, a]) => chat(q, a))
        .join('')
        .repeat(30),
    );
    const t0 = Date.now();
    const pre = await createLlamaTrainer({
      inputs: [{ name: 'corpus', path: at('general.txt') }],
      hyperparameters: { steps: 250, dim: 64, layers: 2, heads: 4, seq: 64, batch: 4, heldOut: 0, lr: 1e-2 },
      seed: 1,
    });
    while (pre.completedSteps < pre.totalSteps) await pre.step();
    const [base] = await pre.exportModel();
    pre.dispose();
    await writeFile(at('base.gguf'), base!.bytes);
    await sealFile(at('base.gguf'), at('base.gguf.sealed'), {
      recipients: [{ type: 'kbs', uri: baseKek.uri!, kek: baseKek.secret }],
    });
    await rm(at('base.gguf'));
    await rm(at('general.txt'));
    say(
      `2. the vendor trains a small general chat model (${(base!.bytes.length / 1024).toFixed(0)} KiB, ${((Date.now() - t0) / 1000).toFixed(1)} s) and seals it to kbs:///vendor/models/kek1`,
    );

    // 3. The help desk's tickets, sealed to its key.
    const lines = TICKETS.flatMap(([qs, a]) => qs.map((q) => JSON.stringify({ prompt: q, completion: a })));
    await writeFile(at('tickets.jsonl'), `${lines.join('\n')}\n`);
    await sealFile(at('tickets.jsonl'), at('tickets.jsonl.sealed'), {
      recipients: [{ type: 'kbs', uri: dataKek.uri!, kek: dataKek.secret }],
    });
    await rm(at('tickets.jsonl'));
    say(
      `3. the help desk seals ${lines.length} tickets (${TICKETS.length} answers, each asked several ways) to kbs:///helpdesk/tickets/kek1`,
    );

    // 4. The job; each owner approves the trainer; the vendor only if nothing but an adapter leaves.
    const job = (name: string, merged: boolean) => ({
      version: 1,
      name,
      inputs: [{ name: 'tickets', path: 'tickets.jsonl.sealed', sha256: '' }],
      base: { path: 'base.gguf.sealed', sha256: '' },
      trainer: { builtin: 'lora' },
      hyperparameters: {
        steps: 150,
        batch: 8,
        seq: 80,
        rank: 16,
        alpha: 16,
        targets: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'],
        lr: 6e-3,
        schedule: 'constant',
        heldOut: 0.15,
      },
      seed: 3,
      outputs: { recipients: ['kbs:///helpdesk/adapters/kek1'], ...(merged ? { merged: true } : {}) },
      checkpoints: { everySteps: 75 },
    });
    const write = async (f: string, j: ReturnType<typeof job>) => {
      j.inputs[0]!.sha256 = await sha(at('tickets.jsonl.sealed'));
      j.base.sha256 = await sha(at('base.gguf.sealed'));
      await keep(f, JSON.stringify(j, null, 2));
      return prepareJob(at(f));
    };
    const prepared = await write('job.json', job('helpdesk-lora', false));
    const trainer = prepared.trainerDigest;
    const approved = `init_data.?data["cloister.train.trainer"].orValue("") == "${trainer}"`;
    const vendorPolicy =
      `dev_mode && cpu.insecure && ((${approved} && init_data.?data["cloister.train.outputs"].orValue("") == "adapter")` +
      ` || cpu.claims.measurement == "${EDGE_MEASUREMENT}")`;
    // The help desk also pins whom the result goes to (its own key) and the base it chose.
    const ours = `init_data.?data["cloister.train.recipients"].orValue("") == ${JSON.stringify(JSON.stringify(prepared.recipients))} && init_data.?data["cloister.train.base"].orValue("") == "${prepared.parsed.manifest.base!.sha256}"`;
    const helpdeskPolicy = `dev_mode && cpu.insecure && ((${approved} && ${ours}) || cpu.claims.measurement == "${EDGE_MEASUREMENT}")`;
    await keep('vendor-policy.cel', vendorPolicy);
    await keep('helpdesk-policy.cel', helpdeskPolicy);
    await vendor.call('PUT', '/admin/v1/policies', {
      json: { scope: 'resource:vendor/models/kek1', source: vendorPolicy },
    });
    for (const r of ['tickets', 'adapters'])
      await helpdesk.call('PUT', '/admin/v1/policies', {
        json: { scope: `resource:helpdesk/${r}/kek1`, source: helpdeskPolicy },
      });
    say(
      `4. job.json: the built-in LoRA trainer ${trainer.slice(0, 19)}… over the sealed base, on the tickets`,
    );
    say('   the vendor releases the base to that trainer only if the init-data says only an adapter leaves');
    say(
      '   ("cloister.train.outputs" == "adapter"), or to the edge server; the help desk, to that trainer or the edge',
    );

    const train = (f: string) =>
      cloister(
        [
          'train',
          at(f),
          '--kbs',
          c.broker.url,
          '--kbs-route',
          `vendor=${v.broker.url}`,
          '--tee',
          'sample',
          '--quiet',
        ],
        say,
      );

    // 5. A job asking for the base merged with the adapter: the vendor says no.
    await write('job-merged.json', job('helpdesk-merged', true));
    say(
      '5. a job that would also output the merged model ("outputs.merged": true) is refused by the vendor:',
    );
    const refused = await train('job-merged.json');
    if (refused === 0) throw new Error('the merged job was not refused');

    // 6. The real job.
    say('6. cloister train job.json --kbs HELPDESK --kbs-route vendor=VENDOR --tee sample');
    const trained = await train('job.json');
    if (trained !== 0) throw new Error(`fine-tuning failed (exit ${trained})`);
    const v1 = await verifyTrainingReceipt(await readFile(at('out/training-receipt.json')), {
      registry: createDefaultRegistry(),
      at: new Date(),
      collateral: offlineSource,
      earKey: c.broker.earPublicKey,
      manifestSha256: prepared.parsed.job,
    });
    const m = v1.predicate.metrics;
    const adapterDigest = `sha256:${await sha(at('out/adapter.gguf.sealed'))}`;
    say(
      `7. the receipt verifies; it names the base ${v1.predicate.base!.sealedSha256.slice(0, 12)}…, the tickets ${v1.predicate.inputs[0]!.sealedSha256.slice(0, 12)}… and the adapter ${adapterDigest.slice(7, 19)}…`,
    );
    say(
      `   held-out perplexity on tickets the trainer never saw: base alone ${m.base_heldout_ppl?.toFixed(2)} → with the adapter ${m.heldout_ppl?.toFixed(2)}`,
    );
    say('   the adapter is sealed to kbs:///helpdesk/adapters/kek1 only; the base never left the TEE');

    // 8. The edge: the base alone, then base + adapter, through the verifying client.
    const questions = ['How do I reset my password?', 'The VPN does not connect.'];
    const ask = (lora: boolean) =>
      serveAndAsk(
        [
          '--kbs',
          v.broker.url,
          '--kbs-route',
          `helpdesk=${c.broker.url}`,
          '--tee',
          'sample',
          '--sample-measurement',
          EDGE_MEASUREMENT,
          '--model',
          at('base.gguf.sealed'),
          ...(lora ? ['--lora', at('out/adapter.gguf.sealed')] : []),
          '--port',
          '0',
          '--threads',
          '1',
        ],
        {
          // The help desk pins its adapter (or, for the base alone, no adapter at all).
          policy: { tees: ['sample'], minStatus: 'warning', adapters: lora ? [adapterDigest] : [] },
          earKey: v.broker.earPublicKey,
          model: 'base',
        },
        questions,
      );
    say(
      '8. an edge TEE serves the base (key from the vendor’s broker), then base + adapter (key from the help desk’s)',
    );
    const before = await ask(false);
    const after = await ask(true);
    questions.forEach((q, i) => {
      say(`   ${JSON.stringify(q)}`);
      say(`      base alone:     ${JSON.stringify(before[i])}`);
      say(`      base + adapter: ${JSON.stringify(after[i])}`);
    });
    say(`demo complete in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    for (const b of brokers) await b.close();
    if (o.keep) say(`files kept in ${dir}`);
    else await rm(dir, { recursive: true, force: true });
  }
}
