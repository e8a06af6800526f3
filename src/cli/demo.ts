/**
 * `cloister demo`: the trust core end to end on embedded defaults, in a temporary directory — a key
 * broker, an owner's key and sealed model, a policy, a workload in the (insecure, dev-mode) sample TEE
 * that unseals and uses the model, a refused attempt, confidential inference (a sealed llama model
 * served through Oblivious HTTP to a client that verifies the server first), and the transparency log
 * verifying.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { AdminClient } from '../kbs/admin-client.js';
import { FlagError } from './io.js';

/** A small but real safetensors file (8-byte header length, JSON header, little-endian f32 data). */
export function tinySafetensors(rows: number, cols: number): Uint8Array {
  const data = new Float32Array(rows * cols).map((_, i) => Math.sin(i) * 0.02);
  const header = JSON.stringify({
    __metadata__: { format: 'pt', made_by: 'cloister demo' },
    'layer.0.weight': { dtype: 'F32', shape: [rows, cols], data_offsets: [0, data.byteLength] },
  });
  const h = new TextEncoder().encode(header.padEnd(Math.ceil(header.length / 8) * 8, ' '));
  const out = new Uint8Array(8 + h.length + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(new Uint8Array(data.buffer), 8 + h.length);
  return out;
}

/** The workload: loads the safetensors model from the plaintext path the agent gives it, runs y = W·1. */
const WORKLOAD = `
const fs = require('fs'), path = require('path');
const b = fs.readFileSync(process.env.CLOISTER_INPUT_0);
const n = Number(b.readBigUInt64LE(0));
const meta = JSON.parse(b.subarray(8, 8 + n).toString());
const t = meta['layer.0.weight'];
const [rows, cols] = t.shape;
const w = new Float32Array(b.buffer.slice(b.byteOffset + 8 + n + t.data_offsets[0], b.byteOffset + 8 + n + t.data_offsets[1]));
let norm = 0;
const y = new Float32Array(rows);
for (let r = 0; r < rows; r++) { let s = 0; for (let c = 0; c < cols; c++) s += w[r * cols + c]; y[r] = s; norm += s * s; }
fs.writeFileSync(path.join(process.env.CLOISTER_OUTPUT_DIR, 'result.json'), JSON.stringify({ rows, cols, norm: Math.sqrt(norm), first: Array.from(y.slice(0, 4)) }));
console.log('[workload] model ' + rows + 'x' + cols + ' loaded from ' + process.env.CLOISTER_INPUT_0 + '; ||W·1|| = ' + Math.sqrt(norm).toFixed(4));
`;

const CLI = new URL('../../bin/cloister.js', import.meta.url).pathname;

/** Runs `cloister …` as a child process, echoing its output indented; resolves with its exit code. */
export function cloister(args: string[], say: (s: string) => void): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const echo = (b: Buffer) => {
      for (const line of b.toString().split('\n'))
        if (line.trim()) say(line.startsWith('      ') ? line : `      ${line}`);
    };
    child.stdout.on('data', echo);
    child.stderr.on('data', echo);
    child.on('close', (code) => resolve(code ?? 1));
  });
}

/** Starts `cloister serve …` and resolves with its URL once it listens; its lines are echoed. */
export function serve(
  args: string[],
  say: (s: string) => void,
): Promise<{ url: string; stop: () => Promise<void> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<void>((r) => child.on('close', () => r()));
    child.stderr.on('data', (b: Buffer) => {
      for (const line of b.toString().split('\n')) {
        if (!line.trim()) continue;
        say(`      ${line}`);
        const m = /listening on (http:\/\/\S+)/.exec(line);
        const stop = () => {
          child.kill('SIGTERM');
          return exited;
        };
        if (m) resolve({ url: m[1]!, stop });
      }
    });
    child.on('close', (code) => reject(new Error(`cloister serve exited (${code}) before listening`)));
  });
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** The two release policies, as the owner writes them (the LLM key shares the model key's). */
const APPROVED_MEASUREMENT = '00'.repeat(48);
const MODEL_POLICY = `"cpu0" in submods && (cpu.status == "affirming" || (dev_mode && cpu.insecure && cpu.status == "warning")) && cpu.claims.measurement == "${APPROVED_MEASUREMENT}"`;
const DATASET_POLICY = 'cpu.kind == "tdx" && cpu.status == "affirming"';

/**
 * What each step of the demo does, as `cloister …` commands a user runs by hand from the kept
 * directory (step n is REPLAY[n - 1]). They use the files the demo wrote there and write only under
 * replay/; CLOISTER_KBS_URL and CLOISTER_ADMIN_TOKEN are the broker and token of step 1, $LLM the
 * server of step 7. `--show-commands` prints them under each step, and replay.sh runs them all.
 */
export const REPLAY: readonly (readonly string[])[] = [
  [
    'cloister kbs serve --config kbs.json --db sqlite:replay/kbs.db --port 0 > replay/kbs.url 2> replay/kbs.log &',
    'export CLOISTER_KBS_URL=$(until [ -s replay/kbs.url ]; do sleep 0.2; done; cat replay/kbs.url)',
    'export CLOISTER_ADMIN_TOKEN=$(cloister kbs admin-token --key admin.jwk --role tenant-admin --tenant owner --subject model-owner --ttl 600)',
  ],
  [
    'cloister kbs resource put owner/models/kek1 model.kek',
    'cloister kbs resource put owner/datasets/kek1 dataset.kek',
  ],
  [
    "# model.sealed is the demo's (its plaintext was deleted); the dataset is sealed again here:",
    'printf \'%s\\n\' \'{"text":"private training example"}\' > replay/data.jsonl',
    'cloister seal --to kbs:///owner/datasets/kek1=dataset.kek replay/data.jsonl replay/data.sealed',
  ],
  [
    'cloister kbs policy set resource:owner/models/kek1 model-policy.cel',
    'cloister kbs policy set resource:owner/datasets/kek1 dataset-policy.cel',
  ],
  [
    'cloister run --kbs "$CLOISTER_KBS_URL" --tee sample --input model.sealed --output-dir replay/out --seal-to kbs:///owner/models/kek1 -- node workload.cjs',
    'cloister unseal --key model.kek replay/out/result.json.sealed replay/result.json',
    '# exit 2: the receipt verifies, but the sample TEE is only ever a warning',
    'cloister agent verify-receipt replay/out/run-receipt.json --ear-key ear.pub.jwk || [ $? -eq 2 ]',
  ],
  [
    '# refused (exit 1): the dataset policy wants Intel TDX',
    'if cloister run --kbs "$CLOISTER_KBS_URL" --tee sample --input replay/data.sealed -- node -e \'console.log("unreachable")\'; then exit 1; fi',
  ],
  [
    'cloister kbs resource put owner/models/llm-kek llm.kek',
    'cloister kbs policy set resource:owner/models/llm-kek model-policy.cel',
    'cloister model tiny-gguf replay/tiny-llama.gguf',
    'cloister seal --to kbs:///owner/models/llm-kek=llm.kek replay/tiny-llama.gguf replay/tiny-llama.gguf.sealed',
    'cloister serve --kbs "$CLOISTER_KBS_URL" --tee sample --model replay/tiny-llama.gguf.sealed --port 0 --threads 1 2> replay/serve.log &',
    "LLM=$(until grep -q 'listening on' replay/serve.log; do sleep 0.2; done; sed -n 's/.*listening on \\(http[^ ]*\\).*/\\1/p' replay/serve.log)",
    'cloister chat --url "$LLM" --allow-sample --ear-key ear.pub.jwk --prompt "Hello, who are you?" --max-tokens 12',
  ],
  [
    'cloister log verify log.jsonl --key-file log.vkey',
    'CLOISTER_ADMIN_TOKEN=$(cloister kbs admin-token --key admin.jwk --role global-auditor --subject auditor --ttl 600) cloister log export --out replay/log.jsonl --proofs all',
    'cloister log verify replay/log.jsonl --key-file log.vkey',
  ],
];

/** replay.sh: every step's commands, runnable with `sh replay.sh` from anywhere. */
export function replayScript(): string {
  return [
    '#!/bin/sh',
    '# Replays `cloister demo` by hand, one step at a time, with the files the demo kept beside this',
    '# script; everything it writes goes to replay/. It needs `cloister` on PATH (npm link in a',
    '# checkout, or npm install -g cloister), or CLOISTER set to the command, e.g.',
    '#   CLOISTER="npx cloister" sh replay.sh',
    'set -eu',
    'cd "$(dirname "$0")"',
    'rm -rf replay && mkdir replay',
    // A program on PATH rather than a shell function, so that `cloister … &` is the process `kill` stops.
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion, not a template.
    'if [ -n "${CLOISTER:-}" ]; then',
    '  mkdir replay/bin && printf \'#!/bin/sh\\nexec %s "$@"\\n\' "$CLOISTER" > replay/bin/cloister',
    '  chmod +x replay/bin/cloister && PATH="$PWD/replay/bin:$PATH"',
    'fi',
    '# The broker (step 1) and the server (step 7) run in the background until the script ends.',
    "pids=''",
    "trap 'kill $pids 2>/dev/null' EXIT",
    ...REPLAY.flatMap((commands, i) => [
      '',
      `# ${i + 1}.`,
      ...commands.flatMap((c) => (c.endsWith('&') ? [c, 'pids="$pids $!"'] : [c])),
    ]),
    '',
  ].join('\n');
}

/** Writes a file a user needs to replay a demo by hand; secrets are 0600. */
export type Keep = (f: string, text: string, secret?: boolean) => Promise<void>;

/**
 * A demo's key broker (dev mode, SQLite in `dir`), with an admin key, an EAR key, a log key and a
 * master key made for the demo, started from a kbs.json that `cloister kbs serve --config` reads the
 * same way.
 */
export async function startDemoBroker(dir: string, keep: Keep) {
  const { exportJWK, generateKeyPair } = await import('jose');
  const { loadConfig, startBroker } = await import('../kbs/index.js');
  const { generateNoteSigner } = await import('../translog/index.js');
  const admin = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  await keep('admin.pub.jwk', JSON.stringify({ ...(await exportJWK(admin.publicKey)), alg: 'EdDSA' }));
  await keep('admin.jwk', JSON.stringify({ ...(await exportJWK(admin.privateKey)), alg: 'EdDSA' }), true);
  const ear = await generateKeyPair('ES256', { extractable: true });
  await keep('ear.jwk', JSON.stringify(await exportJWK(ear.privateKey)), true);
  await keep('ear.pub.jwk', JSON.stringify(await exportJWK(ear.publicKey)));
  const logKey = await generateNoteSigner('cloister-demo/log');
  await keep('log.jwk', JSON.stringify(logKey.jwk), true);
  await keep('log.vkey', logKey.vkey);
  await keep('master.key', btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))), true);
  const config = {
    devMode: true,
    db: 'sqlite:kbs.db',
    adminKeysFile: 'admin.pub.jwk',
    masterKeyFile: 'master.key',
    earKeyFile: 'ear.jwk',
    logKeyFile: 'log.jwk',
    logOrigin: 'cloister-demo/log',
  };
  await keep('kbs.json', JSON.stringify(config, null, 2));
  const brokerLog: string[] = [];
  const broker = await startBroker(await loadConfig(join(dir, 'kbs.json'), { port: 0 }), {
    log: (l) => brokerLog.push(l),
  });
  return { broker, admin, brokerLog };
}

/** A demo's broker as startDemoBroker gives it: the running broker, its admin key pair, its log. */
export type DemoBroker = Awaited<ReturnType<typeof startDemoBroker>>;

/** An admin client of a demo broker as `tenant`'s tenant admin (a token of 10 minutes). */
export async function tenantAdmin(b: DemoBroker, tenant: string): Promise<AdminClient> {
  const { AdminClient } = await import('../kbs/admin-client.js');
  const { signAdminToken } = await import('../kbs/index.js');
  const { token } = await signAdminToken(
    b.admin.privateKey,
    { alg: 'EdDSA' },
    { role: 'tenant-admin', tenant, subject: tenant, ttlSeconds: 600 },
  );
  return new AdminClient(b.broker.url, token);
}

/**
 * Starts `cloister serve …serveArgs`, asks each question in turn (greedy, 48 tokens at most) through
 * the client that verifies the server before sending anything (Oblivious HTTP, with `policy` and the
 * broker's EAR key `earKey`), and stops the server; resolves with the answers, trimmed.
 */
export async function serveAndAsk(
  serveArgs: string[],
  ask: { policy: unknown; earKey: CryptoKey; model: string },
  questions: readonly string[],
): Promise<string[]> {
  const { offlineSource } = await import('../attest/index.js');
  const { confidentialFetch, parseClientPolicy } = await import('../client/index.js');
  const server = await serve(serveArgs, () => {});
  try {
    const client = confidentialFetch({
      url: server.url,
      policy: parseClientPolicy(ask.policy),
      collateral: offlineSource,
      earKey: ask.earKey,
    });
    const answers: string[] = [];
    for (const q of questions) {
      const res = await client(new URL('/v1/chat/completions', server.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: ask.model,
          messages: [{ role: 'user', content: q }],
          max_tokens: 48,
          temperature: 0,
        }),
      });
      const body = (await res.json()) as { choices: { message: { content: string } }[] };
      answers.push(body.choices[0]!.message.content.trim());
    }
    return answers;
  } finally {
    await server.stop();
  }
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run the trust core end to end on embedded defaults, in a temporary directory')
    .option(
      '--keep',
      'keep the directory: keys, policies, sealed files, the exported log and replay.sh (the same steps by hand)',
    )
    .option('--show-commands', 'print under each step the cloister commands that do it by hand')
    .argument(
      '[scenario]',
      'train: the training scenario instead (train in the sample TEE → sealed to the owner → served at the edge); finetune: a vendor’s base tuned with LoRA on a company’s sealed data, served with the adapter',
    )
    .addHelpText(
      'after',
      '\nExamples:\n  npx cloister demo\n  npx cloister demo --keep --show-commands\n  npx cloister demo train\n  npx cloister demo finetune',
    )
    .action(async (scenario: string | undefined, o: { keep?: boolean; showCommands?: boolean }) => {
      if (scenario !== undefined) {
        if (scenario === 'finetune') {
          await (await import('./demo-finetune.js')).demoFinetune({ keep: o.keep === true });
          return;
        }
        if (scenario !== 'train')
          throw new FlagError(`unknown demo scenario ${JSON.stringify(scenario)}; try: train, finetune`);
        await (await import('./demo-train.js')).demoTrain({ keep: o.keep === true });
        return;
      }
      // The whole stack (broker, client, inference) loads when the demo runs, not when the CLI starts.
      const { offlineSource } = await import('../attest/index.js');
      const { confidentialFetch } = await import('../client/index.js');
      const { parseClientPolicy } = await import('../client/index.js');
      const { writeTinyLlamaGguf } = await import('../infer/testing/index.js');
      const { AdminClient } = await import('../kbs/admin-client.js');
      const { startBroker } = await import('../kbs/index.js');
      const { signAdminToken } = await import('../kbs/index.js');
      const { generateKek, kekToJwk } = await import('../seal/index.js');
      const { readHeader, sealFile, unsealToMemory } = await import('../seal/node.js');
      const { parseBundle, verifyBundle } = await import('../translog/index.js');
      const { describeServer } = await import('./chat.js');
      const say = (s: string) => process.stdout.write(`${s}\n`);
      const started = Date.now();
      const dir = await mkdtemp(join(tmpdir(), 'cloister-demo-'));
      const at = (f: string) => join(dir, f);
      /** Under step n, with --show-commands: what a user types to do that step by hand. */
      const show = (n: number) => {
        if (o.showCommands) for (const c of REPLAY[n - 1]!) say(c.startsWith('#') ? `   ${c}` : `   $ ${c}`);
      };
      /** A file a user needs to replay the demo by hand; secrets are 0600. */
      const keep = async (f: string, text: string, secret = false) => {
        await writeFile(at(f), text.endsWith('\n') ? text : `${text}\n`, secret ? { mode: 0o600 } : {});
        if (secret) await chmod(at(f), 0o600);
      };
      let broker: Awaited<ReturnType<typeof startBroker>> | undefined;
      try {
        // 1. The key broker, with keys made for this demo.
        const started1 = await startDemoBroker(dir, keep);
        broker = started1.broker;
        const { admin, brokerLog } = started1;
        say(`1. key broker started at ${broker.url} (SQLite in ${dir})`);
        say(`   ${brokerLog.find((l) => l.includes('DEV MODE IS ON')) ?? ''}`);
        show(1);
        const { token } = await signAdminToken(
          admin.privateKey,
          { alg: 'EdDSA' },
          { role: 'tenant-admin', tenant: 'owner', subject: 'model-owner', ttlSeconds: 600 },
        );
        const owner = new AdminClient(broker.url, token);

        // 2. The owner's keys, held by the broker.
        const modelKek = generateKek('kbs:///owner/models/kek1');
        const dataKek = generateKek('kbs:///owner/datasets/kek1');
        await keep('model.kek', JSON.stringify(kekToJwk(modelKek)), true);
        await keep('dataset.kek', JSON.stringify(kekToJwk(dataKek)), true);
        await owner.call('PUT', '/admin/v1/resources/owner/models/kek1', {
          bytes: new TextEncoder().encode(JSON.stringify(kekToJwk(modelKek))),
        });
        await owner.call('PUT', '/admin/v1/resources/owner/datasets/kek1', {
          bytes: new TextEncoder().encode(JSON.stringify(kekToJwk(dataKek))),
        });
        say(
          '2. owner keys kbs:///owner/models/kek1 and kbs:///owner/datasets/kek1 stored in the broker (values never leave it in clear)',
        );
        show(2);

        // 3. A model and a dataset, sealed on the owner's machine.
        const model = tinySafetensors(512, 512);
        await writeFile(at('model.safetensors'), model);
        await sealFile(at('model.safetensors'), at('model.sealed'), {
          recipients: [{ type: 'kbs', uri: 'kbs:///owner/models/kek1', kek: modelKek.secret }],
          contentType: 'application/vnd.safetensors',
        });
        await writeFile(at('data.jsonl'), '{"text":"private training example"}\n');
        await sealFile(at('data.jsonl'), at('data.sealed'), {
          recipients: [{ type: 'kbs', uri: 'kbs:///owner/datasets/kek1', kek: dataKek.secret }],
        });
        await rm(at('model.safetensors'));
        await rm(at('data.jsonl'));
        const { fileSize } = await readHeader(at('model.sealed'));
        say(
          `3. model (512x512 safetensors, sha256 ${sha(model)}…) sealed to model.sealed (${fileSize} bytes); the plaintext is deleted`,
        );
        show(3);

        // 4. Policies: the model key goes to the approved workload measurement; the dataset key only to TDX.
        await keep('model-policy.cel', MODEL_POLICY);
        await keep('dataset-policy.cel', DATASET_POLICY);
        await owner.call('PUT', '/admin/v1/policies', {
          json: { scope: 'resource:owner/models/kek1', source: MODEL_POLICY },
        });
        await owner.call('PUT', '/admin/v1/policies', {
          json: { scope: 'resource:owner/datasets/kek1', source: DATASET_POLICY },
        });
        say('4. policies set: model key → the approved measurement only; dataset key → Intel TDX only');
        show(4);

        // 5. The workload, run by the agent in the sample TEE.
        say(
          '5. cloister run: attest (sample TEE), fetch the model key, unseal into a private tmpfs dir, run, seal the output',
        );
        show(5);
        await writeFile(at('workload.cjs'), WORKLOAD);
        const ok = await cloister(
          [
            'run',
            '--kbs',
            broker.url,
            '--tee',
            'sample',
            '--input',
            at('model.sealed'),
            '--output-dir',
            at('out'),
            '--seal-to',
            'kbs:///owner/models/kek1',
            '--',
            process.execPath,
            at('workload.cjs'),
          ],
          say,
        );
        if (ok !== 0) throw new Error(`the workload run failed (exit ${ok})`);
        const outputs = (await readdir(at('out'))).sort();
        say(`   outputs: ${outputs.join(', ')} (sealed result and the signed run receipt)`);
        const result = JSON.parse(
          new TextDecoder().decode(await unsealToMemory(at('out/result.json.sealed'), modelKek)),
        );
        say(`   the owner unseals the result with its key: norm ${result.norm.toFixed(4)}`);

        // 6. A refused attempt: the dataset's policy wants TDX, the sample TEE is not.
        say('6. the same workload asks for the dataset: its policy requires Intel TDX');
        show(6);
        const denied = await cloister(
          [
            'run',
            '--kbs',
            broker.url,
            '--tee',
            'sample',
            '--input',
            at('data.sealed'),
            '--',
            process.execPath,
            '-e',
            'console.log("unreachable")',
          ],
          say,
        );
        if (denied === 0) throw new Error('the dataset was released against its policy');
        say(
          `   refused (exit ${denied}); nothing was unsealed. The reason is in the owner's log, not told to the TEE:`,
        );
        const reason = brokerLog.find((l) => l.includes('owner/datasets/kek1') && l.includes('denied'));
        say(`   ${reason?.replace(/^.*?cloister-kbs: /, '') ?? '(no broker log line)'}`);

        // 7. Confidential inference: a sealed llama model served in the sample TEE, reached only through OHTTP.
        const llmKek = generateKek('kbs:///owner/models/llm-kek');
        await keep('llm.kek', JSON.stringify(kekToJwk(llmKek)), true);
        await owner.call('PUT', '/admin/v1/resources/owner/models/llm-kek', {
          bytes: new TextEncoder().encode(JSON.stringify(kekToJwk(llmKek))),
        });
        await owner.call('PUT', '/admin/v1/policies', {
          json: { scope: 'resource:owner/models/llm-kek', source: MODEL_POLICY },
        });
        await writeTinyLlamaGguf(at('tiny-llama.gguf'));
        await sealFile(at('tiny-llama.gguf'), at('tiny-llama.gguf.sealed'), {
          recipients: [{ type: 'kbs', uri: 'kbs:///owner/models/llm-kek', kek: llmKek.secret }],
        });
        await rm(at('tiny-llama.gguf'));
        say(
          '7. confidential inference: a tiny llama model (random weights) sealed to kbs:///owner/models/llm-kek',
        );
        show(7);
        say(
          '   cloister serve: attest, get the model key, unseal into memory, bind its keys into the evidence',
        );
        const server = await serve(
          [
            '--kbs',
            broker.url,
            '--tee',
            'sample',
            '--model',
            at('tiny-llama.gguf.sealed'),
            '--port',
            '0',
            '--threads',
            '1',
          ],
          say,
        );
        try {
          const wire: number[] = [];
          const counting = (async (input: RequestInfo | URL, init?: RequestInit) => {
            if (init?.body instanceof Uint8Array) wire.push(init.body.length);
            return fetch(input, init);
          }) as typeof fetch;
          const devPolicy = parseClientPolicy({ tees: ['sample'], minStatus: 'warning' });
          const client = confidentialFetch({
            url: server.url,
            policy: devPolicy,
            collateral: offlineSource,
            earKey: broker.earPublicKey,
            fetch: counting,
          });
          const verified = await client.server();
          say('   the client verifies the server before sending anything:');
          for (const line of describeServer(verified, devPolicy)) say(`     ${line}`);
          const res = await client(new URL('/v1/chat/completions', server.url), {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({
              model: 'tiny-llama',
              messages: [{ role: 'user', content: 'Hello, who are you?' }],
              max_tokens: 12,
            }),
          });
          const answer = (await res.json()) as { choices: { message: { content: string } }[] };
          say(
            `   chat through Oblivious HTTP: "Hello, who are you?" → ${JSON.stringify(answer.choices[0]!.message.content)} (random weights)`,
          );
          const plain = await fetch(new URL('/v1/models', server.url));
          say(
            `   on the wire: ${wire.length} encrypted request(s) of ${wire.join(', ')} bytes; a plaintext /v1 request gets ${plain.status} (${((await plain.json()) as { error: { code: string } }).error.code})`,
          );
          const strict = confidentialFetch({
            url: server.url,
            policy: parseClientPolicy({}),
            collateral: offlineSource,
          });
          const refusal = await strict.server().then(
            () => 'accepted (unexpected)',
            (e: Error) => e.message,
          );
          say(`   a client with the default policy refuses, sending nothing: ${refusal}`);
        } finally {
          await server.stop();
        }

        // 8. The transparency log, exported and verified offline.
        const { token: audit } = await signAdminToken(
          admin.privateKey,
          { alg: 'EdDSA' },
          { role: 'global-auditor', subject: 'auditor', ttlSeconds: 600 },
        );
        const bundle = await new AdminClient(broker.url, audit).text('/admin/v1/log/bundle?proofs=all');
        await keep('log.jsonl', bundle);
        const report = await verifyBundle(bundle, broker.logVerifierKey);
        if (!report.ok)
          throw new Error(
            `the transparency log did not verify: ${report.errors.map((e) => e.message).join('; ')}`,
          );
        const kinds = new Map<string, number>();
        for (const e of parseBundle(bundle).entries) kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1);
        say(
          `8. transparency log verified offline: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(', ')}; hash chain, Merkle roots, signed checkpoints and inclusion proofs all check`,
        );
        show(8);
        await keep('replay.sh', replayScript());
        await chmod(at('replay.sh'), 0o755);
        say(`demo complete in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      } finally {
        await broker?.close();
        if (o.keep)
          say(
            `files kept in ${dir}: keys, policies (.cel), sealed files, the exported log; sh ${join(dir, 'replay.sh')} replays the demo step by step`,
          );
        else await rm(dir, { recursive: true, force: true });
      }
    });
}
