/**
 * The fine-tuning dataset: a JSONL file of chat examples, tokenized with the base model's own
 * tokenizer and chat template, so that training sees exactly the token ids `cloister serve` feeds the
 * model.
 *
 * Each non-empty line is one example: `{"messages": [{"role": "system"|"user"|"assistant", "content":
 * "…"}, …]}` (ending with an assistant message) or `{"prompt": "…", "completion": "…"}` (one user turn
 * and one assistant turn). Blank lines are skipped; the last line may end without a newline; a line
 * may end in CRLF. Anything else is refused with `bad-input`, in one line naming the line number.
 *
 * Tokenization goes through node-llama-cpp (the vocabulary of the GGUF only, no weights) and the chat
 * wrapper serving picks (src/infer/engine/llama.ts): `resolveChatWrapper(model)` when the GGUF has a
 * `tokenizer.chat_template`, else `GeneralChatWrapper`. For each assistant message, the prompt is the
 * wrapper's rendering of the history before it followed by an empty model turn (what LlamaChat
 * tokenizes before generating the answer); the completion is the answer's tokens as they follow that
 * prompt, plus the token that ends a turn (see `endOfTurn`), so that the tuned model learns to stop.
 *
 * One conversation is one example when each earlier turn renders, in the later prompts, exactly as
 * prompt + answer + end-of-turn (ChatML, Llama 3 and most templates); else (the General format, whose
 * turns end with text, not with the end-of-turn token) each assistant message is an example of its
 * own, with its own prompt: the loss then counts every answer in exactly the context serving gives it.
 *
 * `maxTokens` keeps the start of a longer example (and counts it in `truncated`); a line none of whose
 * answer fits in `maxTokens` is refused, since nothing of it would be trained.
 */
import { open, readFile } from 'node:fs/promises';
import type { ChatHistoryItem, ChatWrapper, Llama, LlamaModel, Token } from 'node-llama-cpp';
import { importOptional } from '../../util/optional/node.js';
import { GgufError, type GgufInfo, readGgufInfo } from '../../wire/index.js';
import { LoraError } from './errors.js';

export interface ChatExample {
  tokens: Int32Array;
  /**
   * completion[i] = 1 when tokens[i] is a completion (assistant) token the loss counts, i.e. the
   * trainer predicts tokens[i] from tokens[0..i-1] with weight completion[i]; 0 for prompt tokens.
   */
  completion: Uint8Array;
}

export interface ChatDataset {
  examples: ChatExample[];
  /** Lines whose tokens were cut to `maxTokens` (their start kept). */
  truncated: number;
  /** The chat wrapper's name, e.g. "ChatML" or "General". */
  template: string;
  /** The base's vocabulary size (`tokenizer.ggml.tokens`); every token id is below it. */
  vocabSize: number;
}

type Role = 'system' | 'user' | 'assistant';
interface Message {
  role: Role;
  content: string;
}
interface Conversation {
  /** 1-based line number in the file. */
  line: number;
  messages: Message[];
}

/** Reads and tokenizes a JSONL chat dataset for fine-tuning the GGUF model at `basePath`. */
export async function loadChatDataset(
  dataPath: string,
  basePath: string,
  options: { maxTokens: number },
): Promise<ChatDataset> {
  const { maxTokens } = options;
  // Two tokens at least: the first token of an example is never predicted.
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 2) {
    throw new LoraError('bad-hyperparameter', `maxTokens must be an integer ≥ 2, got ${maxTokens}`);
  }
  // The whole file is checked before the tokenizer is loaded: a bad line is refused at once.
  const conversations = parseJsonl(await readDataset(dataPath));
  const info = await readBaseHeader(basePath);
  const vocabTokens = info.metadata.get('tokenizer.ggml.tokens');
  if (!Array.isArray(vocabTokens) || vocabTokens.length === 0) {
    throw new LoraError(
      'bad-model',
      `${basePath}: the GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens)`,
    );
  }
  const vocabSize = vocabTokens.length;

  const nlc = await nodeLlamaCpp();
  const model = await loadVocab(basePath);
  try {
    // As serving chooses (src/infer/engine/llama.ts): the model's own template, else the General
    // format, never node-llama-cpp's guess from the architecture.
    const wrapper: ChatWrapper = info.metadata.has('tokenizer.chat_template')
      ? nlc.resolveChatWrapper(model)
      : new nlc.GeneralChatWrapper();
    const tokenizer = new ChatTokenizer(model, wrapper, vocabSize, basePath);
    const examples: ChatExample[] = [];
    let truncated = 0;
    for (const conv of conversations) {
      const encoded = tokenizer.encode(conv.messages);
      const kept = encoded.map((e) => cut(e, maxTokens)).filter((e) => e.completion.includes(1));
      if (kept.length === 0) {
        throw new LoraError(
          'bad-input',
          `line ${conv.line}: the prompt alone takes ${encoded[0]!.completion.indexOf(1)} tokens, a row holds ${maxTokens} (hyperparameters.seq + 1): none of the answer would be trained; raise seq or shorten the prompt`,
        );
      }
      if (kept.length < encoded.length || kept.some((e, i) => e.tokens.length < encoded[i]!.tokens.length)) {
        truncated++;
      }
      examples.push(...kept);
    }
    return { examples, truncated, template: wrapper.wrapperName, vocabSize };
  } finally {
    await model.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------
// The JSONL file

async function readDataset(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new LoraError('bad-input', `cannot read the dataset ${path}: ${fileError(err)}`);
  }
}

function fileError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : String(err);
}

const NEWLINE = 0x0a;
const CR = 0x0d;

/** Every example line of the file, checked; refuses the first bad line. */
function parseJsonl(bytes: Uint8Array): Conversation[] {
  // fatal: a byte sequence that is not UTF-8 is refused rather than replaced by U+FFFD.
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const out: Conversation[] = [];
  let start = 0;
  for (let line = 1; start < bytes.length; line++) {
    let end = bytes.indexOf(NEWLINE, start);
    if (end < 0) end = bytes.length; // the last line may end without a newline
    const next = end + 1;
    if (end > start && bytes[end - 1] === CR) end--;
    let text: string;
    try {
      // The decoder drops a byte-order mark at the start, as editors on Windows write one.
      text = utf8.decode(bytes.subarray(start, end));
    } catch {
      throw new LoraError('bad-input', `line ${line} is not valid UTF-8`);
    }
    start = next;
    if (text.trim() === '') continue;
    out.push({ line, messages: parseExample(text, line) });
  }
  if (out.length === 0) {
    throw new LoraError(
      'bad-input',
      'the dataset has no examples: the file is empty or has only blank lines',
    );
  }
  return out;
}

const ROLES: readonly string[] = ['system', 'user', 'assistant'];

function parseExample(text: string, line: number): Message[] {
  const bad = (why: string) => new LoraError('bad-input', `line ${line}: ${why}`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    // The parser's message quotes the line's start: sealed content, which refusals never show the host.
    throw new LoraError(
      'bad-input',
      `line ${line} is not valid JSON (${err instanceof SyntaxError ? 'a syntax error' : 'unreadable'})`,
    );
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw bad('an example is a JSON object: {"messages": [...]} or {"prompt": "...", "completion": "..."}');
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj);
  if ('messages' in obj) {
    const extra = keys.find((k) => k !== 'messages');
    if (extra !== undefined) throw bad('has a field other than "messages"');
    return parseMessages(obj.messages, bad);
  }
  const extra = keys.find((k) => k !== 'prompt' && k !== 'completion');
  if (extra !== undefined) {
    throw bad('has an unknown field (an example has "messages", or "prompt" and "completion")');
  }
  for (const field of ['prompt', 'completion'] as const) {
    const v = obj[field];
    if (v === undefined) throw bad(`no "${field}" (an example has "messages", or "prompt" and "completion")`);
    if (typeof v !== 'string') throw bad(`"${field}" must be a string`);
    if (v.trim() === '') throw bad(`"${field}" is empty`);
  }
  return [
    { role: 'user', content: obj.prompt as string },
    { role: 'assistant', content: obj.completion as string },
  ];
}

function parseMessages(value: unknown, bad: (why: string) => LoraError): Message[] {
  if (!Array.isArray(value) || value.length === 0) throw bad('"messages" must be a non-empty list');
  const messages = value.map((m: unknown, i): Message => {
    const n = i + 1;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) {
      throw bad(`message ${n} must be an object with "role" and "content"`);
    }
    const msg = m as Record<string, unknown>;
    const extra = Object.keys(msg).find((k) => k !== 'role' && k !== 'content');
    if (extra !== undefined) throw bad(`message ${n} has a field other than "role" and "content"`);
    if (typeof msg.role !== 'string' || !ROLES.includes(msg.role)) {
      throw bad(`message ${n} has a role other than system, user and assistant`);
    }
    if (typeof msg.content !== 'string') throw bad(`message ${n} (${msg.role}): content must be a string`);
    if (msg.content.trim() === '') throw bad(`message ${n} (${msg.role}) has empty content`);
    return { role: msg.role as Role, content: msg.content };
  });
  const last = messages.findLastIndex((m) => m.role === 'assistant');
  if (last < 0) throw bad("no assistant message: the loss is computed on the assistant's answers");
  if (last < messages.length - 1) {
    // Nothing after the last answer would be trained: most likely an answer is missing.
    throw bad(
      `message ${last + 2} (${messages[last + 1]!.role}) comes after the last assistant message: a conversation ends with an answer`,
    );
  }
  return messages;
}

// ---------------------------------------------------------------------------------------------------
// The base's vocabulary

/** A header bigger than this is refused rather than read: real models' headers are a few MiB. */
const MAX_HEADER_BYTES = 512 << 20;

/**
 * The base's GGUF header, read by our own reader first (as serving does: llama.cpp can abort the
 * process on some malformed files). The same few lines as src/infer/models/gguf-node.ts, repeated
 * because train may not import infer (sibling rooms on floor 4).
 */
async function readBaseHeader(path: string): Promise<GgufInfo> {
  let info: GgufInfo | undefined;
  try {
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      for (let want = 1 << 20; info === undefined; want *= 2) {
        const n = Math.min(want, size);
        const buf = new Uint8Array(n);
        const { bytesRead } = await fh.read(buf, 0, n, 0);
        try {
          info = readGgufInfo(buf.subarray(0, bytesRead), size);
        } catch (err) {
          if (!(err instanceof GgufError && err.reason === 'need-more')) throw err;
          if (n >= MAX_HEADER_BYTES) {
            throw new GgufError('unsupported', `GGUF header is larger than ${MAX_HEADER_BYTES} bytes`);
          }
        }
      }
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof GgufError) throw new LoraError('bad-model', `${path}: ${err.message}`);
    throw new LoraError('bad-model', `cannot read the base model ${path}: ${fileError(err)}`);
  }
  if (!info.complete) {
    throw new LoraError(
      'bad-model',
      `${path}: truncated GGUF file: its tensors need ${info.requiredSize} bytes, the file has ${info.fileSize}`,
    );
  }
  return info;
}

type NodeLlamaCpp = typeof import('node-llama-cpp');
let nlcModule: Promise<NodeLlamaCpp> | undefined;
let llamaInstance: Promise<Llama> | undefined;
/** llama.cpp's error lines while a vocabulary loads, quoted when it fails ("Failed to load model" says little). */
let loadErrors: string[] | undefined;

// node-llama-cpp is an optional peer dependency, loaded on first use (as serving loads it).
function nodeLlamaCpp(): Promise<NodeLlamaCpp> {
  nlcModule ??= importOptional<NodeLlamaCpp>('node-llama-cpp', "fine-tuning (the base's tokenizer)");
  return nlcModule;
}

/**
 * One Llama for the process, with the options serving uses (src/infer/engine/llama.ts, repeated here
 * because train may not import infer): prebuilt binaries only, never a build or a download, logs
 * silenced. The CPU backend: a vocabulary needs no GPU, and probing one costs seconds.
 */
async function sharedLlama(): Promise<Llama> {
  const { getLlama, LlamaLogLevel } = await nodeLlamaCpp();
  if (llamaInstance === undefined) {
    llamaInstance = getLlama({
      gpu: false,
      build: 'never',
      skipDownload: true,
      usePrebuiltBinaries: true,
      progressLogs: false,
      logLevel: LlamaLogLevel.error,
      logger: (level, message) => {
        if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) {
          loadErrors?.push(message.replace(/\n$/, ''));
        }
      },
      maxThreads: 0,
    });
    llamaInstance.catch(() => {
      llamaInstance = undefined;
    });
  }
  return llamaInstance;
}

async function loadVocab(path: string): Promise<LlamaModel> {
  let llama: Llama;
  try {
    llama = await sharedLlama();
  } catch (err) {
    throw new LoraError('bad-model', `llama.cpp is not usable here to tokenize: ${errorText(err)}`);
  }
  const errors: string[] = [];
  loadErrors = errors;
  try {
    return await llama.loadModel({ modelPath: path, vocabOnly: true, gpuLayers: 0 });
  } catch (err) {
    const why = errors.find((l) => l.includes('error loading model')) ?? errorText(err);
    throw new LoraError('bad-model', `llama.cpp refused the base's vocabulary ${path}: ${why}`);
  } finally {
    loadErrors = undefined;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------------------
// Chat formatting

function startsWith(tokens: readonly number[], prefix: readonly number[]): boolean {
  if (prefix.length > tokens.length) return false;
  for (let i = 0; i < prefix.length; i++) if (tokens[i] !== prefix[i]) return false;
  return true;
}

function historyItem(m: Message): ChatHistoryItem {
  // As serving maps messages (src/infer/engine/llama.ts): a system text is plain text, never parsed
  // for special tokens.
  if (m.role === 'system') return { type: 'system', text: m.content };
  if (m.role === 'user') return { type: 'user', text: m.content };
  return { type: 'model', response: [m.content] };
}

/** A prompt and the answer that follows it, end-of-turn included. */
interface Turn {
  prompt: number[];
  answer: number[];
}

class ChatTokenizer {
  /** The token that ends an answer. */
  private readonly endOfTurn: number;

  constructor(
    private readonly model: LlamaModel,
    private readonly wrapper: ChatWrapper,
    private readonly vocabSize: number,
    basePath: string,
  ) {
    const eot = this.findEndOfTurn();
    if (eot === undefined) {
      throw new LoraError(
        'bad-model',
        `${basePath}: the base has no end-of-turn token (its chat template ends no turn with one, and it has no EOS)`,
      );
    }
    this.endOfTurn = eot;
  }

  /** The tokens LlamaChat feeds for this history: the wrapper's context text, tokenized by the model. */
  private render(history: ChatHistoryItem[]): number[] {
    const tokens = this.wrapper
      .generateContextState({ chatHistory: history })
      .contextText.tokenize(this.model.tokenizer);
    return Array.from(tokens, Number);
  }

  /**
   * The token the model should end an answer with: the first token the wrapper writes after a finished
   * answer when it is a token that stops generation (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`);
   * else EOS (the General format ends a turn with text, "\n\n### Human", but generation stops on EOS
   * too, and an answer that ends in EOS ends cleanly in any format).
   */
  private findEndOfTurn(): number | undefined {
    const probe: ChatHistoryItem[] = [
      { type: 'user', text: 'hello' },
      { type: 'model', response: ['hello'] },
    ];
    const answered = this.render(probe);
    const continued = this.render([...probe, { type: 'user', text: 'hello' }]);
    const state = this.wrapper.generateContextState({ chatHistory: probe });
    const stoppers = new Set<number>();
    for (const trigger of state.stopGenerationTriggers) {
      const tokens = trigger.tokenize(this.model.tokenizer, 'trimLeadingSpace');
      if (tokens.length === 1) stoppers.add(tokens[0]!);
    }
    if (startsWith(continued, answered) && continued.length > answered.length) {
      const next = continued[answered.length]!;
      if (stoppers.has(next) || this.model.isEogToken(next as Token)) return next;
    }
    const eos = this.model.tokens.eos;
    return eos === null ? undefined : Number(eos);
  }

  /** One example for the conversation, or one per answer (see the module's comment). */
  encode(messages: Message[]): ChatExample[] {
    const history = messages.map(historyItem);
    const turns: Turn[] = [];
    for (let i = 0; i < messages.length; i++) {
      if (messages[i]!.role === 'assistant') turns.push(this.turn(history, i, messages[i]!.content));
    }
    let whole = true;
    let prev: number[] = [];
    for (const t of turns) {
      if (!startsWith(t.prompt, prev)) {
        whole = false;
        break;
      }
      prev = [...t.prompt, ...t.answer];
    }
    const examples = whole ? [this.join(turns)] : turns.map((t) => this.join([t]));
    for (const e of examples) {
      for (const id of e.tokens) {
        if (id < 0 || id >= this.vocabSize) {
          throw new LoraError(
            'bad-model',
            `the tokenizer gave token ${id}, outside the vocabulary of ${this.vocabSize}`,
          );
        }
      }
    }
    return examples;
  }

  /** The answer at `index`: the prompt serving would give for it, and the answer's tokens after it. */
  private turn(history: ChatHistoryItem[], index: number, content: string): Turn {
    const prompt = this.render([...history.slice(0, index), { type: 'model', response: [] }]);
    const answered = this.render(history.slice(0, index + 1));
    // Usually the answer is a segment of its own, tokenized apart, and the prompt is a prefix of the
    // rendering with the answer. Where a format puts it in one text with what precedes it (the General
    // format's "### Assistant\n"), a tokenizer can merge across the boundary; serving still feeds the
    // prompt alone, and the model's answer is then the answer's own tokens after it.
    const answer = startsWith(answered, prompt)
      ? answered.slice(prompt.length)
      : Array.from(this.model.tokenize(content, false, 'trimLeadingSpace'), Number);
    answer.push(this.endOfTurn);
    return { prompt, answer };
  }

  /** Consecutive turns (each prompt extending the previous turn) as one example. */
  private join(turns: Turn[]): ChatExample {
    const last = turns[turns.length - 1]!;
    const length = last.prompt.length + last.answer.length;
    const tokens = new Int32Array(length);
    const completion = new Uint8Array(length);
    tokens.set(last.prompt);
    tokens.set(last.answer, last.prompt.length);
    for (const t of turns) completion.fill(1, t.prompt.length, t.prompt.length + t.answer.length);
    return { tokens, completion };
  }
}

/** The example's first `maxTokens` tokens. */
function cut(e: ChatExample, maxTokens: number): ChatExample {
  if (e.tokens.length <= maxTokens) return e;
  return { tokens: e.tokens.slice(0, maxTokens), completion: e.completion.slice(0, maxTokens) };
}
