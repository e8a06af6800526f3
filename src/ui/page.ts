/**
 * The `cloister serve --ui` page (browser only; bundled by scripts/build-ui.mjs). It verifies the
 * server it was loaded from with the client SDK, entirely in this browser and against this page's own
 * policy, before a single prompt leaves it; then it chats through Oblivious HTTP, so the prompts and
 * replies are encrypted to a key that the attestation proves lives in the TEE.
 *
 * The server that served this page could also have served a page that lies; what this page buys is a
 * check anyone can read the source of. A user who does not trust the server's copy verifies it with
 * `cloister chat` instead.
 */
// @peculiar/x509's dependency injection needs the Reflect metadata API before it loads.
import 'reflect-metadata';
import { httpSource, MEASUREMENT_CLAIMS } from '../attest/index.js';
import {
  type ClientPolicy,
  type ConfidentialFetch,
  confidentialFetch,
  DEFAULT_CLIENT_POLICY,
  parseClientPolicy,
  VerificationError,
  type VerifiedServer,
} from '../client/index.js';
import { readChatStream } from './sse.js';

/** The development policy: the sample TEE is software only, so its appraisal is at best a warning. */
const SAMPLE_POLICY = parseClientPolicy({ tees: ['sample'], minStatus: 'warning' });

function byId<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e as T;
}

const ui = {
  status: byId<HTMLParagraphElement>('status'),
  sample: byId<HTMLInputElement>('sample'),
  verification: byId<HTMLDListElement>('verification'),
  warnings: byId<HTMLUListElement>('warnings'),
  model: byId<HTMLSelectElement>('model'),
  messages: byId<HTMLOListElement>('messages'),
  form: byId<HTMLFormElement>('chat'),
  prompt: byId<HTMLTextAreaElement>('prompt'),
  send: byId<HTMLButtonElement>('send'),
  stop: byId<HTMLButtonElement>('stop'),
};

type Message = { role: 'user' | 'assistant'; content: string };

/** The verified client; undefined until (and unless) the current policy accepted the server. */
let client: ConfidentialFetch | undefined;
let history: Message[] = [];
let reply: AbortController | undefined;
/** Counts verifications so that one overtaken by a policy change cannot enable the chat. */
let round = 0;

function setStatus(state: 'verifying' | 'verified' | 'refused' | 'error', text: string, warned = false) {
  ui.status.dataset.state = state;
  ui.status.toggleAttribute('data-warned', warned);
  ui.status.textContent = text;
}

function node<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, className?: string) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function row(label: string, ...values: (string | Node)[]) {
  const dd = node('dd');
  dd.append(...values);
  ui.verification.append(node('dt', label), dd);
}

function code(text: string) {
  return node('code', text);
}

type AttestedModel = VerifiedServer['document']['identity']['models'][number];

/**
 * A model as attested: id, format, digest, then each LoRA adapter it carries (short digest, the whole
 * one on hover, and its scale): an adapter changes the weights as much as another model would.
 */
function modelLine(m: AttestedModel): (string | Node)[] {
  const parts: (string | Node)[] = [`${m.id} (${m.format}): `, code(m.digest)];
  for (const a of m.adapters ?? []) {
    const digest = code(`${String(a.digest).slice(0, 'sha256:'.length + 12)}…`);
    digest.title = String(a.digest);
    parts.push(' + LoRA adapter ', digest, ` at scale ${String(a.scale)}`);
  }
  return parts;
}

function lines(items: (string | Node)[][]) {
  const ul = node('ul');
  for (const parts of items) {
    const li = node('li');
    li.append(...parts);
    ul.append(li);
  }
  return ul;
}

function showServer(server: VerifiedServer, policy: ClientPolicy) {
  const { identity, evidence } = server.document;
  const cpu = server.appraisal.submods.cpu0!;
  row('TEE', code(evidence.kind), cpu.insecure ? ' — software only, NOT confidential' : '');
  row('Appraisal', code(server.appraisal.status));
  row(
    'Confidential GPUs',
    evidence.gpus.length === 0
      ? 'none'
      : lines(
          Object.entries(server.appraisal.submods)
            .filter(([name]) => name.startsWith('gpu'))
            .map(([name, a]) => [`${name}: `, code(a.status)]),
        ),
  );
  row(
    'Evidence',
    policy.fresh ? 'fresh, answering a random nonce from this page' : "the server's startup evidence",
  );
  const measured = MEASUREMENT_CLAIMS.filter((c) => typeof cpu.claims[c] === 'string');
  row(
    'Measurements',
    measured.length === 0 ? 'none' : lines(measured.map((c) => [`${c}: `, code(String(cpu.claims[c]))])),
  );
  row('Models', lines(identity.models.map(modelLine)));
  row('Software', `${identity.software.name} ${identity.software.version} `, code(identity.software.digest));
  const key = server.keyConfigs[0]!;
  row('OHTTP key', `key id ${key.keyId}, HPKE KEM 0x${key.kemId.toString(16).padStart(4, '0')}`);
  row(
    'Your requests',
    'end-to-end encrypted (Oblivious HTTP) to that key, which the evidence binds to this TEE; ' +
      'only the TEE can read your prompts and the replies',
  );
  row('Key broker token', server.document.ear ? 'present (not checked by this page)' : 'none');

  const notes = [
    ...server.warnings,
    ...Object.entries(server.appraisal.submods).flatMap(([name, a]) =>
      a.findings.filter((f) => f.status !== 'affirming').map((f) => `${name}: ${f.message}`),
    ),
  ];
  for (const n of notes) ui.warnings.append(node('li', n));

  for (const m of identity.models) {
    const o = node('option', m.id);
    o.value = m.id;
    ui.model.append(o);
  }
  // Only GGUF models chat; an ONNX bundle may be an embedding model.
  ui.model.value = identity.models.find((m) => m.format === 'gguf')?.id ?? identity.models[0]?.id ?? '';
}

function refusal(e: unknown): string {
  if (!(e instanceof VerificationError)) {
    return `Could not verify the server, so this page will not send anything: ${(e as Error).message ?? String(e)}`;
  }
  let text = `Refused to chat (${e.code}): ${e.message}`;
  if ((e.cause as { code?: unknown } | undefined)?.code === 'collateral-unavailable') {
    text +=
      "\n\nThe TEE vendor's certificates or revocation lists could not be fetched (the page gets them " +
      'through its server, which could not reach the vendor). Verify this server with `cloister chat --collateral DIR` instead.';
  }
  return text;
}

function setChatEnabled(on: boolean) {
  const busy = reply !== undefined;
  ui.model.disabled = !on;
  ui.prompt.disabled = !on;
  ui.send.disabled = !on || busy;
  ui.stop.disabled = !busy;
}

async function verify(): Promise<void> {
  const mine = ++round;
  reply?.abort();
  client = undefined;
  history = [];
  ui.verification.replaceChildren();
  ui.warnings.replaceChildren();
  ui.model.replaceChildren();
  ui.messages.replaceChildren();
  setChatEnabled(false);
  setStatus('verifying', "Verifying the server's attestation in this browser…");
  const policy = ui.sample.checked ? SAMPLE_POLICY : DEFAULT_CLIENT_POLICY;
  // The page may talk only to its server (CSP), which relays vendor collateral; signatures are checked here.
  const viaServer = ((input: RequestInfo | URL, init?: RequestInit) =>
    fetch(`/v1/collateral?url=${encodeURIComponent(String(input))}`, init)) as typeof fetch;
  const f = confidentialFetch({
    url: location.origin,
    policy,
    collateral: httpSource({ fetch: viaServer }),
    // A refusal is shown as the client's, not as something the server answered.
    refusals: 'throw',
  });
  try {
    const server = await f.server();
    if (mine !== round) return;
    showServer(server, policy);
    client = f;
    setChatEnabled(true);
    setStatus(
      'verified',
      `Verified: a ${server.document.evidence.kind} TEE, appraised ${server.appraisal.status}. ` +
        'Your messages are encrypted end to end to it.' +
        (server.warnings.length > 0 ? ' Read the warnings below.' : ''),
      server.warnings.length > 0,
    );
  } catch (e) {
    if (mine !== round) return;
    setStatus(e instanceof VerificationError ? 'refused' : 'error', refusal(e));
  }
}

function addMessage(role: 'user' | 'assistant' | 'error', text: string) {
  const li = node('li', text);
  li.dataset.role = role;
  ui.messages.append(li);
  li.scrollIntoView({ block: 'end' });
  return li;
}

async function errorText(res: Response): Promise<string> {
  const body = await res.text();
  try {
    const m = (JSON.parse(body) as { error?: { message?: unknown }; detail?: unknown }) ?? {};
    if (typeof m.error?.message === 'string') return m.error.message;
    if (typeof m.detail === 'string') return m.detail;
  } catch {
    // Not JSON: the status line says enough.
  }
  return `the server answered ${res.status}`;
}

async function send(): Promise<void> {
  const f = client;
  const content = ui.prompt.value.trim();
  if (!f || content === '' || reply) return;
  const mine = round;
  history.push({ role: 'user', content });
  addMessage('user', content);
  ui.prompt.value = '';
  const ac = new AbortController();
  reply = ac;
  setChatEnabled(true);
  const out = addMessage('assistant', '');
  out.setAttribute('aria-busy', 'true');
  let text = '';
  try {
    const res = await f(`${location.origin}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ model: ui.model.value, messages: history, stream: true }),
      signal: ac.signal,
    });
    if (!res.ok || !res.body) throw new Error(await errorText(res));
    for await (const e of readChatStream(res.body)) {
      if (e.type === 'delta') {
        text += e.text;
        out.textContent = text;
      } else if (e.type === 'error') {
        throw new Error(e.message);
      } else if (e.type === 'done') {
        break;
      }
    }
    if (mine === round) history.push({ role: 'assistant', content: text });
  } catch (e) {
    if (mine !== round) return;
    if (ac.signal.aborted) {
      out.textContent = `${text} [stopped]`;
      if (text) history.push({ role: 'assistant', content: text });
    } else {
      if (!text) out.remove();
      addMessage('error', (e as Error).message ?? String(e));
      // Keep the conversation the server saw: a failed turn is dropped so the user can retry it.
      if (!text) history.pop();
    }
  } finally {
    out.removeAttribute('aria-busy');
    if (reply === ac) reply = undefined;
    setChatEnabled(client !== undefined);
  }
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  void send();
});
ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    void send();
  }
});
ui.stop.addEventListener('click', () => reply?.abort());
ui.sample.addEventListener('change', () => void verify());

// Demos and tests open the page with ?dev=1; the box stays visible and can be unticked.
ui.sample.checked = new URLSearchParams(location.search).get('dev') === '1';
void verify();
