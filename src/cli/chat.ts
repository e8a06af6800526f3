/**
 * `cloister chat`: a terminal chat with a confidential inference server. It verifies the server's
 * attestation against the user's policy first and shows what it verified; it sends nothing to a
 * server that fails. Every message then goes end-to-end encrypted through Oblivious HTTP.
 */
import { appendFile, readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { type Command, CommanderError } from 'commander';
import type { CollateralSource } from '../attest/types.js';
import type { ClientPolicy, VerifiedServer } from '../client/index.js';
import { collateralCacheDir } from './collateral-sources.js';
import { integerOption } from './numbers.js';
import { spinner } from './progress.js';
import { cacertOption } from './tls.js';

interface ChatCliOptions {
  url: string;
  policy?: string;
  allowSample?: boolean;
  model?: string;
  prompt?: string;
  system?: string;
  maxTokens?: string;
  receipts?: string;
  collateral?: string;
  online?: boolean;
  earKey?: string;
  cacert?: string;
  adapter: string[];
}

async function collateralOf(o: ChatCliOptions): Promise<CollateralSource> {
  const { chainSources, httpSource } = await import('../attest/index.js');
  const { cachedSource, directorySource } = await import('../attest/collateral/node.js');
  const sources: CollateralSource[] = [];
  if (o.collateral) sources.push(directorySource(o.collateral));
  sources.push(cachedSource(httpSource(), collateralCacheDir(), o.online ? {} : { offline: true }));
  return chainSources(...sources);
}

/** What was verified, for a person: one line per fact. */
export function describeServer(s: VerifiedServer, policy: ClientPolicy): string[] {
  const id = s.document.identity;
  const cpu = s.appraisal.submods.cpu0!;
  const lines = [
    `TEE         ${s.document.evidence.kind} (appraisal: ${s.appraisal.status})${s.document.evidence.gpus.length ? ` + ${s.document.evidence.gpus.length} GPU(s)` : ''}`,
    `binding     the evidence's report data covers the OHTTP key(s) ${s.keyConfigs.map((k) => `#${k.keyId}`).join(', ')}, the receipt key, the models and the software below${id.nonce ? ', and our fresh nonce' : ''}`,
    ...id.models.flatMap((m) => [
      `model       ${m.id}  ${m.digest}  (${m.format})`,
      ...(m.adapters ?? []).map((a) => `  adapter   ${a.digest}  scale ${a.scale}  (LoRA, on ${m.id})`),
    ]),
    `software    cloister ${id.software.version}  ${id.software.digest}`,
    `policy      TEEs ${policy.tees.join('/')}, at least ${policy.minStatus}${Object.keys(policy.measurements).length ? `, measurements ${Object.keys(policy.measurements).join(', ')}` : ''}${policy.models.length ? `, ${policy.models.length} allowed model digest(s)` : ''}${policy.adapters === undefined ? '' : policy.adapters.length ? `, exactly ${policy.adapters.length} pinned adapter(s)` : ', no adapter'}`,
  ];
  for (const k of ['mr_td', 'measurement', 'mr_enclave'])
    if (typeof cpu.claims[k] === 'string') lines.push(`${k.padEnd(12)}${cpu.claims[k] as string}`);
  if (id.sharedKeys)
    lines.push(
      `keys        shared by replicas, released by ${id.sharedKeys} (named in the policy's sharedKeys)`,
    );
  if (s.ear) lines.push(`key broker  its EAR token verifies and describes the same TEE (${s.ear.status})`);
  for (const w of s.warnings) lines.push(`WARNING     ${w}`);
  return lines;
}

async function* sseData(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const piece of body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(piece, { stream: true });
    let i = buf.indexOf('\n\n');
    while (i >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split('\n')) if (line.startsWith('data: ')) yield line.slice(6);
      i = buf.indexOf('\n\n');
    }
  }
}

export function registerChat(program: Command): void {
  program
    .command('chat')
    .description('chat with a confidential inference server after verifying its attestation')
    .requiredOption('--url <url>', 'the server, e.g. https://llm.example:8443')
    .option(
      '--policy <file>',
      'client policy (JSON: tees, minStatus, measurements, models, adapters, software, fresh, requireGpu, sharedKeys)',
    )
    .option(
      '--allow-sample',
      'accept the INSECURE sample TEE (development; same as tees ["sample"], minStatus warning)',
    )
    .option('--model <id>', 'the model to chat with (default: the first text model the server attests)')
    .option(
      '--adapter <digest[@scale]>',
      'pin a LoRA adapter (sha256:<hex> of the sealed adapter, then @scale unless it is 1; repeatable): the model must carry exactly the pinned adapters at those scales (added to the policy’s adapters)',
      (v: string, prev: string[]) => [...prev, v],
      [],
    )
    .option('--prompt <text>', 'send one message, print the reply and exit (default: interactive)')
    .option('--system <text>', 'a system message at the start of the conversation')
    .option('--max-tokens <n>', 'longest reply in tokens')
    .option(
      '--receipts <file>',
      'ask for a signed receipt per reply, verify it and append it to FILE (JSON lines)',
    )
    .option('--collateral <dir>', 'folder with vendor collateral for the server’s evidence')
    .option('--online', 'fetch missing collateral from the vendor services (cached on disk)')
    .option(
      '--ear-key <file>',
      "the key broker's EAR verification key (public JWK): its token must verify and describe the same TEE",
    )
    .addOption(cacertOption())
    .addHelpText(
      'after',
      '\nExamples:\n  cloister chat --url https://llm.example:8443 --policy policy.json\n' +
        '  cloister chat --url http://127.0.0.1:8443 --allow-sample --prompt "Hello"   # development server',
    )
    .exitOverride()
    .action(async (o: ChatCliOptions) => {
      // The client (verifiers, HPKE) loads when a chat starts, not when the CLI starts.
      const { confidentialFetch } = await import('../client/index.js');
      const { DEFAULT_CLIENT_POLICY, parseClientPolicy } = await import('../client/index.js');
      const { nodeBackend } = await import('../ohttp/node.js');
      const maxTokens = o.maxTokens === undefined ? undefined : integerOption(o.maxTokens, '--max-tokens', 1);
      let policy = o.policy
        ? parseClientPolicy(await readFile(o.policy, 'utf8'))
        : structuredClone(DEFAULT_CLIENT_POLICY);
      if (o.allowSample)
        policy = { ...policy, tees: [...new Set([...policy.tees, 'sample'])], minStatus: 'warning' };
      if (o.adapter.length > 0)
        policy = parseClientPolicy({ ...policy, adapters: [...(policy.adapters ?? []), ...o.adapter] });
      const receipts: string[] = [];
      const f = confidentialFetch({
        url: o.url,
        policy,
        collateral: await collateralOf(o),
        ...(o.earKey ? { earKey: JSON.parse(await readFile(o.earKey, 'utf8')) as JsonWebKey } : {}),
        ohttp: nodeBackend,
        // A refusal after the first verification (a re-verification, a model check) is ours to print.
        refusals: 'throw',
        // The Node fetch trusting --cacert; the SDK itself stays web-standard and takes it as given.
        fetch: await (await import('../http/client.js')).clientFetch(o.cacert),
        ...(o.receipts ? { onReceipt: (_r: unknown, jws: string) => receipts.push(jws) } : {}),
      });
      let server: VerifiedServer;
      try {
        server = await f.server();
      } catch (e) {
        process.stderr.write(
          `cloister chat: REFUSED: ${(e as Error).message}\nNothing was sent to ${o.url}.\n`,
        );
        throw new CommanderError(3, 'cloister.chat.refused', '');
      }
      process.stderr.write(
        `verified ${o.url}\n${describeServer(server, policy)
          .map((l) => `  ${l}`)
          .join('\n')}\n`,
      );
      const models = server.document.identity.models;
      if (o.model !== undefined && !models.some((m) => m.id === o.model))
        throw new Error(
          `--model ${o.model}: the server serves ${models.map((m) => m.id).join(', ') || 'no model'}`,
        );
      const model = o.model ?? models.find((m) => m.format === 'gguf')?.id;
      if (!model) throw new Error('the server attests no text model; name one with --model');
      const history: { role: string; content: string }[] = o.system
        ? [{ role: 'system', content: o.system }]
        : [];

      async function ask(text: string): Promise<void> {
        history.push({ role: 'user', content: text });
        // Prompt processing can take a while before the first token: say so on a terminal.
        const waiting = spinner('waiting for the first token…');
        let reply = '';
        try {
          const res = await f(new URL('v1/chat/completions', o.url.endsWith('/') ? o.url : `${o.url}/`), {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({
              model,
              messages: history,
              stream: true,
              ...(maxTokens !== undefined ? { max_tokens: maxTokens } : {}),
            }),
          });
          if (!res.ok || !res.body) {
            const detail = await res.text();
            history.pop();
            throw new Error(`the server answered ${res.status}: ${detail}`);
          }
          for await (const data of sseData(res.body)) {
            // Read on past [DONE]: the receipt comes in the trailers at the very end.
            if (data === '[DONE]') continue;
            const event = JSON.parse(data) as {
              choices?: { delta?: { content?: string } }[];
              error?: { message: string };
            };
            if (event.error) throw new Error(`generation failed: ${event.error.message}`);
            const piece = event.choices?.[0]?.delta?.content ?? '';
            if (piece) waiting.stop();
            reply += piece;
            process.stdout.write(piece);
          }
        } finally {
          waiting.stop();
        }
        process.stdout.write('\n');
        history.push({ role: 'assistant', content: reply });
        if (o.receipts) {
          // Receipts are verified by confidentialFetch as the stream ends; keep them as JSON lines.
          await appendFile(
            o.receipts,
            receipts
              .splice(0)
              .map((jws) => `${JSON.stringify({ model, jws })}\n`)
              .join(''),
          );
        }
      }

      if (o.prompt !== undefined) {
        await ask(o.prompt);
        return;
      }
      process.stderr.write(`chatting with ${model}; an empty line or Ctrl-D ends\n`);
      const rl = createInterface({
        input: process.stdin,
        output: process.stderr,
        terminal: process.stdin.isTTY,
      });
      rl.setPrompt('> ');
      rl.prompt();
      try {
        for await (const line of rl) {
          if (line.trim() === '') break;
          try {
            await ask(line);
          } catch (e) {
            process.stderr.write(`error: ${(e as Error).message}\n`);
          }
          rl.prompt();
        }
      } finally {
        rl.close();
      }
    });
}
