/**
 * The OpenAI-compatible API as a web-standard handler, `(Request) => Promise<Response>`, so the same
 * code answers plain HTTP requests (when the operator allows them) and the requests the Oblivious HTTP
 * gateway decapsulates. Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions,
 * POST /v1/completions (both streamed as server-sent events with `stream: true`), POST /v1/embeddings.
 *
 * A request takes a slot in its model's queue before anything runs. A streamed response is returned
 * only once the engine has produced its first text (or failed), so a prompt that is too long is a 400,
 * not a 200 followed by an error event. The request's signal (the client going away) stops generation.
 */

import { toBase64 } from '../util/index.js';
import {
  type AdapterIdentity,
  formatAdaptersHeader,
  MODEL_ADAPTERS_HEADER,
  MODEL_DIGEST_HEADER,
} from '../wire/index.js';
import type { ChatMessage, Engine, GenerateParams, GenerationResult, OnText } from './engine/types.js';
import { errorBody, errorResponse, type InferCode, InferError, toInferError } from './errors.js';
import type { RequestQueue } from './queue.js';

export interface ServedModel {
  id: string;
  engine: Engine;
  /** `sha256:<hex>` of the sealed model file: what the model owner sealed, and what clients pin. */
  digest: string;
  /** LoRA adapters applied to it (sealed digests and scales), as attested; absent when none. */
  adapters?: AdapterIdentity[];
  /** Unix seconds when the server loaded it. */
  created: number;
  queue: RequestQueue;
}

export interface OpenAiOptions {
  models: ServedModel[];
  /** max_tokens when the request gives none. */
  defaultMaxTokens: number;
  /**
   * Pad every streamed event to a multiple of this many bytes (0: no padding). Encryption hides the
   * text but not the length of each chunk, and one event per token would otherwise leak token lengths.
   */
  padStreamTo?: number;
}

/** One server-sent event, padded with a comment line (which every SSE reader ignores) when asked. */
export function sseEvent(data: string, padTo = 0): Uint8Array {
  const body = `data: ${data}\n`;
  if (padTo <= 0) return encoder.encode(`${body}\n`);
  const length = encoder.encode(body).length + 1;
  // A comment line is ":" + filler + "\n": at least 2 bytes.
  const filler = (padTo - ((length + 2) % padTo)) % padTo;
  return encoder.encode(`${body}:${' '.repeat(filler)}\n\n`);
}

export type Handler = (request: Request) => Promise<Response>;

type Json = Record<string, unknown>;
const encoder = new TextEncoder();

function json(body: unknown, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { headers: { 'content-type': 'application/json', ...extra } });
}

/** Names the answering model (and its adapters) in every model response, so receipts can bind them. */
function modelHeader(m: ServedModel): Record<string, string> {
  return {
    [MODEL_DIGEST_HEADER]: m.digest,
    ...(m.adapters?.length ? { [MODEL_ADAPTERS_HEADER]: formatAdaptersHeader(m.adapters) } : {}),
  };
}

function bad(message: string, param: string | null = null, code: InferCode = 'invalid_request'): InferError {
  return new InferError(code, message, param);
}

function randomId(prefix: string): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

async function readJson(request: Request): Promise<Json> {
  let body: unknown;
  try {
    body = JSON.parse(await request.text());
  } catch {
    throw bad('the request body is not valid JSON', null, 'invalid_json');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw bad('the request body must be a JSON object');
  return body as Json;
}

function optionalNumber(body: Json, name: string, min: number, max: number): number | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw bad(`${name} must be a number from ${min} to ${max}`, name);
  }
  return v;
}

function optionalInteger(body: Json, name: string, min: number, max: number): number | undefined {
  const v = optionalNumber(body, name, min, max);
  if (v !== undefined && !Number.isInteger(v)) throw bad(`${name} must be an integer`, name);
  return v;
}

function stopStrings(body: Json): string[] {
  const s = body.stop;
  if (s === undefined || s === null) return [];
  const list = typeof s === 'string' ? [s] : s;
  if (!Array.isArray(list) || list.length > 4 || !list.every((x) => typeof x === 'string' && x.length > 0)) {
    throw bad('stop must be a non-empty string or a list of at most 4 of them', 'stop');
  }
  return list as string[];
}

function messageText(content: unknown, i: number): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        const p = part as Json;
        if (p?.type !== 'text' || typeof p.text !== 'string') {
          throw bad(`messages[${i}].content[${j}]: only text parts are supported`, `messages[${i}].content`);
        }
        return p.text;
      })
      .join('');
  }
  throw bad(`messages[${i}].content must be a string or a list of text parts`, `messages[${i}].content`);
}

function chatMessages(body: Json): ChatMessage[] {
  const m = body.messages;
  if (!Array.isArray(m) || m.length === 0) throw bad('messages must be a non-empty list', 'messages');
  return m.map((raw, i) => {
    const msg = raw as Json;
    // Developer messages are OpenAI's newer name for system messages.
    const role = msg?.role === 'developer' ? 'system' : msg?.role;
    if (role !== 'system' && role !== 'user' && role !== 'assistant') {
      throw bad(`messages[${i}].role must be system, developer, user or assistant`, `messages[${i}].role`);
    }
    return { role, content: messageText(msg.content, i) };
  });
}

export function createOpenAiHandler(options: OpenAiOptions): Handler {
  const padTo = options.padStreamTo ?? 0;
  const byId = new Map(options.models.map((m) => [m.id, m]));

  function modelOf(body: Json, want: Engine['kind']): ServedModel {
    if (typeof body.model !== 'string') throw bad('model is required', 'model');
    const m = byId.get(body.model);
    if (!m) {
      throw new InferError(
        'model_not_found',
        `the model '${body.model}' is not served here; GET /v1/models lists those that are`,
        'model',
      );
    }
    if (m.engine.kind !== want) {
      const what = want === 'text' ? 'a text generation' : 'an embedding';
      throw bad(`the model '${m.id}' is not ${what} model`, 'model', 'wrong_model_kind');
    }
    return m;
  }

  function generateParams(body: Json, signal: AbortSignal): GenerateParams {
    if ((optionalInteger(body, 'n', 1, 1) ?? 1) !== 1) throw bad('only n = 1 is supported', 'n');
    const asked =
      optionalInteger(body, 'max_completion_tokens', 1, 1_000_000) ??
      optionalInteger(body, 'max_tokens', 1, 1_000_000);
    const seed = optionalInteger(body, 'seed', -(2 ** 53), 2 ** 53);
    return {
      maxTokens: asked ?? options.defaultMaxTokens,
      ...(asked === undefined ? { fitContext: true } : {}),
      temperature: optionalNumber(body, 'temperature', 0, 2) ?? 1,
      topP: optionalNumber(body, 'top_p', 0, 1) ?? 1,
      ...(seed !== undefined ? { seed } : {}),
      stop: stopStrings(body),
      signal,
    };
  }

  /**
   * Runs one generation in the model's queue. Resolves once the engine has produced text or finished,
   * so failures before the first token are still ordinary HTTP errors; `done` settles at the end.
   */
  async function startGeneration(
    model: ServedModel,
    signal: AbortSignal,
    run: (onText: OnText) => Promise<GenerationResult>,
    onText: OnText,
  ): Promise<{ done: Promise<GenerationResult> }> {
    const release = await model.queue.acquire(signal);
    let started!: () => void;
    const first = new Promise<void>((resolve) => {
      started = resolve;
    });
    const done = run((t) => {
      started();
      onText(t);
    }).finally(release);
    await Promise.race([first, done]);
    return { done };
  }

  async function completion(request: Request, chat: boolean): Promise<Response> {
    const body = await readJson(request);
    const model = modelOf(body, 'text');
    if (model.engine.kind !== 'text') throw new Error('unreachable: modelOf checked the kind');
    const engine = model.engine;
    const messages = chat ? chatMessages(body) : undefined;
    let prompt = '';
    if (!chat) {
      const p = Array.isArray(body.prompt) && body.prompt.length === 1 ? body.prompt[0] : body.prompt;
      if (typeof p !== 'string') throw bad('prompt must be a string (or a list of exactly one)', 'prompt');
      prompt = p;
    }
    const stream = body.stream === true;
    const includeUsage = (body.stream_options as Json | undefined)?.include_usage === true;
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    request.signal.addEventListener('abort', onAbort, { once: true });
    const params = generateParams(body, ac.signal);
    const id = randomId(chat ? 'chatcmpl-' : 'cmpl-');
    const created = Math.floor(Date.now() / 1000);
    const object = chat ? 'chat.completion' : 'text_completion';
    const run = (onText: OnText) =>
      messages ? engine.chat(messages, params, onText) : engine.complete(prompt, params, onText);
    const usage = (r: GenerationResult) => ({
      prompt_tokens: r.promptTokens,
      completion_tokens: r.completionTokens,
      total_tokens: r.promptTokens + r.completionTokens,
    });
    const finish = (r: GenerationResult) => (r.finishReason === 'length' ? 'length' : 'stop');

    if (!stream) {
      try {
        const { done } = await startGeneration(model, ac.signal, run, () => {});
        const r = await done;
        const choice = chat
          ? { index: 0, message: { role: 'assistant', content: r.text }, finish_reason: finish(r) }
          : { index: 0, text: r.text, logprobs: null, finish_reason: finish(r) };
        return json(
          { id, object, created, model: model.id, choices: [choice], usage: usage(r) },
          modelHeader(model),
        );
      } finally {
        request.signal.removeEventListener('abort', onAbort);
      }
    }

    const chunkObject = chat ? 'chat.completion.chunk' : 'text_completion';
    const event = (data: unknown) => sseEvent(typeof data === 'string' ? data : JSON.stringify(data), padTo);
    const chunk = (choice: Json, extra: Json = {}) =>
      event({ id, object: chunkObject, created, model: model.id, choices: [choice], ...extra });
    const pending: Uint8Array[] = chat
      ? [chunk({ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null })]
      : [];
    let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
    const emit = (bytes: Uint8Array) => {
      if (controller) controller.enqueue(bytes);
      else pending.push(bytes);
    };
    const onText = (text: string) =>
      emit(
        chat
          ? chunk({ index: 0, delta: { content: text }, finish_reason: null })
          : chunk({ index: 0, text, logprobs: null, finish_reason: null }),
      );
    let done: Promise<GenerationResult>;
    try {
      ({ done } = await startGeneration(model, ac.signal, run, onText));
    } catch (e) {
      request.signal.removeEventListener('abort', onAbort);
      throw e;
    }
    let cancelled = false;
    const body$ = new ReadableStream<Uint8Array>({
      start(ctrl) {
        // After a cancel the stream is closed; late pieces of the generation go nowhere.
        const c = {
          enqueue: (b: Uint8Array) => {
            if (!cancelled) ctrl.enqueue(b);
          },
          close: () => {
            if (!cancelled) ctrl.close();
          },
        };
        controller = c as ReadableStreamDefaultController<Uint8Array>;
        for (const p of pending) c.enqueue(p);
        done
          .then((r) => {
            if (r.finishReason === 'abort') return;
            const last = chat
              ? { index: 0, delta: {}, finish_reason: finish(r) }
              : { index: 0, text: '', logprobs: null, finish_reason: finish(r) };
            c.enqueue(chunk(last));
            if (includeUsage) {
              c.enqueue(
                event({ id, object: chunkObject, created, model: model.id, choices: [], usage: usage(r) }),
              );
            }
            c.enqueue(event('[DONE]'));
          })
          .catch((e: unknown) => {
            c.enqueue(event(errorBody(toInferError(e))));
          })
          .finally(() => {
            request.signal.removeEventListener('abort', onAbort);
            c.close();
          });
      },
      cancel() {
        cancelled = true;
        ac.abort();
      },
    });
    return new Response(body$, {
      headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-store', ...modelHeader(model) },
    });
  }

  async function embeddings(request: Request): Promise<Response> {
    const body = await readJson(request);
    const model = modelOf(body, 'embedding');
    if (model.engine.kind !== 'embedding') throw new Error('unreachable: modelOf checked the kind');
    const raw = body.input;
    const inputs = typeof raw === 'string' ? [raw] : raw;
    if (!Array.isArray(inputs) || inputs.length === 0 || !inputs.every((x) => typeof x === 'string')) {
      throw bad('input must be a string or a non-empty list of strings', 'input');
    }
    if (inputs.length > 2048) throw bad('input holds more than 2048 strings', 'input');
    const format = body.encoding_format ?? 'float';
    if (format !== 'float' && format !== 'base64')
      throw bad('encoding_format must be float or base64', 'encoding_format');
    const dims = optionalInteger(body, 'dimensions', 1, 1_000_000);
    if (dims !== undefined && dims !== model.engine.dimensions) {
      throw bad(`this model makes ${model.engine.dimensions}-dimensional embeddings`, 'dimensions');
    }
    const release = await model.queue.acquire(request.signal);
    let result: Awaited<ReturnType<typeof model.engine.embed>>;
    try {
      result = await model.engine.embed(inputs as string[], request.signal);
    } finally {
      release();
    }
    const data = result.vectors.map((v, index) => ({
      object: 'embedding',
      index,
      embedding:
        format === 'float' ? Array.from(v) : toBase64(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)),
    }));
    return json(
      {
        object: 'list',
        data,
        model: model.id,
        usage: { prompt_tokens: result.promptTokens, total_tokens: result.promptTokens },
      },
      modelHeader(model),
    );
  }

  function modelJson(m: ServedModel): Json {
    return {
      id: m.id,
      object: 'model',
      created: m.created,
      owned_by: 'cloister',
      digest: m.digest,
      ...(m.adapters?.length ? { adapters: m.adapters } : {}),
    };
  }

  async function route(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    const method = request.method;
    if (path === '/v1/models' && method === 'GET') {
      return json({ object: 'list', data: options.models.map(modelJson) });
    }
    if (path.startsWith('/v1/models/') && method === 'GET') {
      const m = byId.get(decodeURIComponent(path.slice('/v1/models/'.length)));
      if (!m) throw new InferError('model_not_found', 'no such model', 'model');
      return json(modelJson(m));
    }
    const post: Record<string, () => Promise<Response>> = {
      '/v1/chat/completions': () => completion(request, true),
      '/v1/completions': () => completion(request, false),
      '/v1/embeddings': () => embeddings(request),
    };
    const handler = post[path];
    if (handler) {
      if (method !== 'POST') throw new InferError('method_not_allowed', `${path} takes POST`);
      return handler();
    }
    throw new InferError('not_found', `no route ${method} ${path}`);
  }

  return async (request) => {
    try {
      return await route(request);
    } catch (e) {
      return errorResponse(toInferError(e));
    }
  };
}
