/**
 * The llama.cpp engine (node-llama-cpp 3.21.1) for GGUF text models: one memory-mapped model, one
 * context with `parallel` sequences; each request takes a sequence and disposes it afterwards, so no
 * KV cache (and no prompt-cache timing signal) is shared between requests.
 *
 * node-llama-cpp never builds or downloads anything here: only its prebuilt binaries are used
 * (`build: 'never'`, `skipDownload`). The file is checked with our own GGUF reader first, because
 * llama.cpp can abort the whole process on some malformed files.
 *
 * Error codes (EngineError; the statuses are INFER_STATUS's, src/infer/errors.ts): `bad-model`
 * (500: the model is the operator's input, not a client's; missing, not GGUF, truncated or refused
 * by llama.cpp), `engine-failed` (500: no usable llama.cpp binary, context creation or generation
 * failed), `engine-closed` (500), `bad-request` (400: invalid parameters) and `prompt-too-long` (400:
 * prompt tokens + maxTokens exceed the per-sequence context; a chat prompt must also leave 2 tokens
 * free, as LlamaChat would otherwise drop messages). Neither
 * the prompt nor the conversation is ever silently shortened.
 *
 * An abort stops generation within a token, but not prompt evaluation: a long prompt is evaluated
 * to the end before the abort is seen.
 */
import type {
  ChatHistoryItem,
  ChatWrapper,
  Llama,
  LlamaContext,
  LlamaContextSequence,
  LlamaModel,
} from 'node-llama-cpp';
import { importOptional } from '../../util/optional/node.js';
import { GgufError, isLoraScale, LORA_SCALE_RANGE } from '../../wire/index.js';
import { readGgufInfoFromFile } from '../models/gguf-node.js';
import { StopScanner } from './stop.js';
import {
  type ChatMessage,
  EngineError,
  type GenerateParams,
  type GenerationResult,
  type OnText,
  type TextEngine,
} from './types.js';

// node-llama-cpp is an optional peer dependency: this module is imported only when a GGUF model is
// served (engines.ts), and says how to install the package when it is absent.
const { GeneralChatWrapper, getLlama, LlamaChat, LlamaCompletion, LlamaLogLevel, resolveChatWrapper } =
  await importOptional<typeof import('node-llama-cpp')>('node-llama-cpp', 'serving GGUF models');
type LlamaLogLevel = import('node-llama-cpp').LlamaLogLevel;

export type LlamaLog = (level: string, message: string) => void;

export interface LlamaEngineOptions {
  /** A GGUF file. */
  path: string;
  /** `auto` (default) uses CUDA/Vulkan/Metal when a prebuilt binary for it works, else the CPU; `false` forces the CPU. */
  gpu?: 'auto' | false;
  /**
   * Tokens per sequence. Default: the model's trained context length, capped at 8192. llama.cpp may
   * round it up (to a multiple of 256) while that stays within the trained length; `contextLength`
   * reports the size in effect.
   */
  contextSize?: number;
  /** Concurrent generations (context sequences). Default 1. */
  parallel?: number;
  /** CPU threads per evaluation. Default: the cores useful for math. */
  threads?: number;
  /** Receives llama.cpp's log lines; without it they are silenced. */
  log?: LlamaLog;
  /**
   * LoRA adapters (GGUF) applied to every generation, each with its scale (llama.cpp adds
   * scale · alpha / rank · B A x). They are set on the one context, when it is created; llama.cpp
   * reads each file whole then, so the caller may wipe the files once this resolves.
   */
  adapters?: readonly LlamaAdapter[];
}

export interface LlamaAdapter {
  path: string;
  scale: number;
}

const DEFAULT_CONTEXT_CAP = 8192;

// One Llama (the native backend) per GPU choice for the whole process. Its log callback fans out
// to the engines that asked for logs; with none, only errors reach it, and only to be quoted in a
// load failure (llama.cpp's exception says just "Failed to load model", its log says why).
const logSinks = new Set<LlamaLog>();
const loadErrorCaptures = new Set<string[]>();
const llamas = new Map<string, Promise<Llama>>();

function dispatchLog(level: LlamaLogLevel, message: string): void {
  const line = message.replace(/\n$/, '');
  if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal) {
    for (const c of loadErrorCaptures) c.push(line);
  }
  for (const sink of logSinks) sink(level, line);
}

function currentLogLevel(): LlamaLogLevel {
  return logSinks.size > 0 ? LlamaLogLevel.info : LlamaLogLevel.error;
}

function updateLogLevels(): void {
  const level = currentLogLevel();
  for (const p of llamas.values()) {
    p.then(
      (l) => {
        l.logLevel = level;
      },
      () => {},
    );
  }
}

function sharedLlama(gpu: 'auto' | false): Promise<Llama> {
  const key = String(gpu);
  let p = llamas.get(key);
  if (p === undefined) {
    p = getLlama({
      gpu,
      build: 'never',
      skipDownload: true,
      usePrebuiltBinaries: true,
      progressLogs: false,
      logLevel: currentLogLevel(),
      logger: dispatchLog,
      // Threads are set per context; node-llama-cpp's default cap (at least 4) oversubscribes small machines.
      maxThreads: 0,
    });
    llamas.set(key, p);
    p.catch(() => llamas.delete(key));
  }
  return p;
}

/**
 * Loads llama.cpp's native binding ahead of a model (hundreds of milliseconds), so a caller can do it
 * while the model is still being unsealed. A failure here is reported again by loadLlamaEngine.
 */
export async function warmUpLlama(gpu: 'auto' | false = 'auto'): Promise<void> {
  await sharedLlama(gpu);
}

/** Load a GGUF model and return an engine for it; refuses a bad file with `bad-model`. */
export async function loadLlamaEngine(options: LlamaEngineOptions): Promise<TextEngine> {
  const { path, gpu = 'auto', parallel = 1, log } = options;
  if (!Number.isSafeInteger(parallel) || parallel < 1) {
    throw new EngineError('bad-request', `parallel must be a positive integer, got ${parallel}`);
  }
  if (
    options.contextSize !== undefined &&
    (!Number.isSafeInteger(options.contextSize) || options.contextSize < 2)
  ) {
    throw new EngineError('bad-request', `contextSize must be an integer ≥ 2, got ${options.contextSize}`);
  }
  if (options.threads !== undefined && (!Number.isSafeInteger(options.threads) || options.threads < 1)) {
    throw new EngineError('bad-request', `threads must be a positive integer, got ${options.threads}`);
  }
  const adapters = options.adapters ?? [];
  for (const a of adapters) {
    if (!isLoraScale(a.scale))
      throw new EngineError(
        'bad-request',
        `${a.path}: an adapter's scale must be ${LORA_SCALE_RANGE}, got ${a.scale}`,
      );
  }

  let info: Awaited<ReturnType<typeof readGgufInfoFromFile>>;
  try {
    info = await readGgufInfoFromFile(path);
  } catch (err) {
    if (err instanceof GgufError)
      throw new EngineError('bad-model', `${path}: ${err.message}`, { cause: err });
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : String(err);
    throw new EngineError('bad-model', `cannot read model ${path}: ${why}`, { cause: err });
  }
  if (!info.complete) {
    throw new EngineError(
      'bad-model',
      `${path}: truncated GGUF file: its tensors need ${info.requiredSize} bytes, the file has ${info.fileSize}`,
    );
  }

  // A wrapper of our own, so that two engines given the same function do not share one entry.
  const sink: LlamaLog | undefined = log ? (level, message) => log(level, message) : undefined;
  if (sink) logSinks.add(sink);
  updateLogLevels();
  const dropLog = () => {
    if (sink && logSinks.delete(sink)) updateLogLevels();
  };

  let llama: Llama;
  try {
    llama = await sharedLlama(gpu);
  } catch (err) {
    dropLog();
    throw new EngineError('engine-failed', `llama.cpp is not usable here: ${errorText(err)}`, {
      cause: err,
    });
  }

  let model: LlamaModel;
  const loadErrors: string[] = [];
  loadErrorCaptures.add(loadErrors);
  try {
    model = await llama.loadModel({ modelPath: path, gpuLayers: gpu === false ? 0 : 'auto', useMmap: true });
  } catch (err) {
    dropLog();
    const why = loadErrors.find((l) => l.includes('error loading model')) ?? errorText(err);
    throw new EngineError('bad-model', `llama.cpp refused ${path}: ${why}`, { cause: err });
  } finally {
    loadErrorCaptures.delete(loadErrors);
  }

  let context: LlamaContext;
  const contextErrors: string[] = [];
  loadErrorCaptures.add(contextErrors);
  try {
    context = await model.createContext({
      sequences: parallel,
      contextSize: options.contextSize ?? Math.min(model.trainContextSize, DEFAULT_CONTEXT_CAP),
      threads: options.threads ?? llama.cpuMathCores,
      failedCreationRemedy: false,
      ...(adapters.length > 0
        ? { lora: { adapters: adapters.map((a) => ({ filePath: a.path, scale: a.scale })) } }
        : {}),
    });
  } catch (err) {
    await model.dispose().catch(() => {});
    dropLog();
    // The adapters were checked against the model before (src/infer/load.ts); a refusal here is
    // llama.cpp's own, quoted.
    if (adapters.length > 0 && /lora|adapter/i.test(errorText(err))) {
      const why = contextErrors.at(-1) ?? errorText(err);
      throw new EngineError('bad-model', `llama.cpp refused a LoRA adapter: ${why}`, { cause: err });
    }
    throw new EngineError('engine-failed', `cannot create a llama.cpp context: ${errorText(err)}`, {
      cause: err,
    });
  } finally {
    loadErrorCaptures.delete(contextErrors);
  }

  // The model's own template (node-llama-cpp maps well-known ones onto its tuned wrappers and runs
  // the rest as Jinja). Without one, a plain general format: node-llama-cpp would otherwise guess
  // from the architecture (Llama 2's [INST] format for any llama model), which is usually wrong.
  const chatWrapper = info.metadata.has('tokenizer.chat_template')
    ? resolveChatWrapper(model)
    : new GeneralChatWrapper();
  return new LlamaEngine(model, context, chatWrapper, parallel, async () => {
    await context.dispose();
    await model.dispose();
    dropLog();
  });
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

type StopReason =
  | 'eogToken'
  | 'stopGenerationTrigger'
  | 'customStopTrigger'
  | 'functionCalls'
  | 'maxTokens'
  | 'abort';

function finishReason(reason: StopReason): GenerationResult['finishReason'] {
  if (reason === 'maxTokens') return 'length';
  if (reason === 'abort') return 'abort';
  return 'stop';
}

function checkParams(p: GenerateParams): void {
  const bad = (m: string) => new EngineError('bad-request', m);
  if (!Number.isSafeInteger(p.maxTokens) || p.maxTokens < 1)
    throw bad(`maxTokens must be a positive integer`);
  if (!Number.isFinite(p.temperature) || p.temperature < 0) throw bad('temperature must be a number ≥ 0');
  if (!Number.isFinite(p.topP) || p.topP <= 0 || p.topP > 1) throw bad('topP must be in (0, 1]');
  if (p.seed !== undefined && (!Number.isSafeInteger(p.seed) || p.seed < 0))
    throw bad('seed must be an integer ≥ 0');
  if (!Array.isArray(p.stop) || p.stop.some((s) => typeof s !== 'string' || s === '')) {
    throw bad('stop must be a list of non-empty strings');
  }
}

/** Options shared by LlamaCompletion and LlamaChat generation. */
function sampling(p: Omit<GenerateParams, 'stop' | 'signal'>, signal: AbortSignal, onText: OnText) {
  return {
    maxTokens: p.maxTokens,
    temperature: p.temperature,
    topP: p.topP,
    ...(p.seed !== undefined ? { seed: p.seed } : {}),
    // No hidden repetition penalty: the sampling is what the request asked for.
    repeatPenalty: false as const,
    // Stop strings are ours (StopScanner): node-llama-cpp's triggers drop the text they hold back
    // when generation ends at maxTokens, so a stop string's unfinished start would vanish.
    signal,
    stopOnAbortSignal: true,
    onTextChunk: onText,
  };
}

type Sampling = ReturnType<typeof sampling>;

class LlamaEngine implements TextEngine {
  readonly kind = 'text' as const;
  readonly contextLength: number;
  private closed = false;
  private free: number;
  private readonly waiting: (() => void)[] = [];

  constructor(
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly chatWrapper: ChatWrapper,
    readonly parallel: number,
    private readonly dispose: () => Promise<void>,
  ) {
    this.contextLength = context.contextSize;
    this.free = parallel;
  }

  async complete(prompt: string, params: GenerateParams, onText: OnText): Promise<GenerationResult> {
    this.checkOpen();
    checkParams(params);
    if (typeof prompt !== 'string') throw new EngineError('bad-request', 'prompt must be a string');
    const bos = this.model.tokens.shouldPrependBosToken && this.model.tokens.bos !== null;
    // Tokenised as LlamaCompletion does (no special tokens: prompt text cannot forge control tokens).
    const tokens = this.model.tokenize(prompt, false, bos ? 'trimLeadingSpace' : undefined);
    const promptTokens = tokens.length + (bos ? 1 : 0);
    if (promptTokens === 0) throw new EngineError('bad-request', 'the prompt is empty');
    this.checkLength(promptTokens, params.maxTokens);
    return this.withSequence(params, onText, promptTokens, async (sequence, options) => {
      const completion = new LlamaCompletion({ contextSequence: sequence });
      const res = await completion.generateCompletionWithMeta(tokens, {
        ...options,
        // The prompt is known to fit: without these LlamaCompletion would silently drop its start.
        contextShiftSize: 1,
        disableContextShift: true,
      });
      return { reason: res.metadata.stopReason };
    });
  }

  async chat(messages: ChatMessage[], params: GenerateParams, onText: OnText): Promise<GenerationResult> {
    this.checkOpen();
    checkParams(params);
    if (!Array.isArray(messages) || messages.length === 0) {
      throw new EngineError('bad-request', 'messages must be a non-empty list');
    }
    const history: ChatHistoryItem[] = messages.map((m, i) => {
      if (typeof m?.content !== 'string')
        throw new EngineError('bad-request', `message ${i}: content must be a string`);
      if (m.role === 'system') return { type: 'system', text: m.content };
      if (m.role === 'user') return { type: 'user', text: m.content };
      if (m.role === 'assistant') return { type: 'model', response: [m.content] };
      throw new EngineError('bad-request', `message ${i}: unknown role ${String(m.role)}`);
    });
    // Always a new assistant turn, even after an assistant message (no prefill continuation).
    history.push({ type: 'model', response: [] });
    const { contextText } = this.chatWrapper.generateContextState({ chatHistory: history });
    const promptTokens = contextText.tokenize(this.model.tokenizer).length;
    // LlamaChat drops old messages (its context shift) unless the prompt leaves one cell free beyond
    // the token it evaluates to start generating, so a chat prompt may use at most contextLength − 2.
    // With that, and prompt + maxTokens within the context, it never shifts: the history is never cut.
    this.checkLength(promptTokens, params.maxTokens, 2);
    return this.withSequence(params, onText, promptTokens, async (sequence, options) => {
      const chat = new LlamaChat({ contextSequence: sequence, chatWrapper: this.chatWrapper });
      const res = await chat.generateResponse(history, options);
      return { reason: res.metadata.stopReason };
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const wake of this.waiting.splice(0)) wake();
    await this.dispose();
  }

  private checkOpen(): void {
    if (this.closed) throw new EngineError('engine-closed', 'the engine is closed');
  }

  private checkLength(promptTokens: number, maxTokens: number, minFree = 1): void {
    // Generating maxTokens tokens evaluates promptTokens + maxTokens − 1 of them: the last one is
    // sampled but never fed back, so the sum may equal the context length.
    if (promptTokens + Math.max(maxTokens, minFree) > this.contextLength) {
      const limit = this.contextLength - minFree;
      const why =
        promptTokens > limit
          ? `the prompt (${promptTokens} tokens) leaves no room to generate in a context of ${this.contextLength}`
          : `prompt (${promptTokens} tokens) + maxTokens (${maxTokens}) exceeds the context length (${this.contextLength})`;
      throw new EngineError('prompt-too-long', why);
    }
  }

  /**
   * Run `fn` on a fresh sequence, waiting for one to free up; an abort while waiting ends the request.
   * If `onText` throws, generation stops and the request rejects with that error (node-llama-cpp
   * would print it and carry on generating for nobody).
   */
  private async withSequence(
    params: GenerateParams,
    onText: OnText,
    promptTokens: number,
    fn: (s: LlamaContextSequence, options: Sampling) => Promise<{ reason: StopReason }>,
  ): Promise<GenerationResult> {
    const aborted: GenerationResult = { text: '', finishReason: 'abort', promptTokens, completionTokens: 0 };
    if (!(await this.acquire(params.signal))) return aborted;
    const halt = new AbortController();
    let callbackFailed: { error: unknown } | undefined;
    const scanner = new StopScanner(params.stop, (text) => {
      if (callbackFailed) return;
      try {
        onText(text);
      } catch (error) {
        callbackFailed = { error };
        halt.abort();
      }
    });
    const guardedOnText: OnText = (text) => {
      if (scanner.push(text)) halt.abort();
    };
    const signal = AbortSignal.any([params.signal, halt.signal]);
    let sequence: LlamaContextSequence | undefined;
    try {
      if (this.closed) throw new EngineError('engine-closed', 'the engine is closed');
      sequence = this.context.getSequence();
      const { reason } = await fn(sequence, sampling(params, signal, guardedOnText));
      if (!scanner.stopped) scanner.flush();
      if (callbackFailed) throw callbackFailed.error;
      return {
        text: scanner.text,
        finishReason: scanner.stopped ? 'stop' : finishReason(reason),
        promptTokens,
        completionTokens: sequence.tokenMeter.usedOutputTokens,
      };
    } catch (err) {
      if (callbackFailed) throw callbackFailed.error;
      if (err instanceof EngineError) throw err;
      if (params.signal.aborted) return aborted;
      throw new EngineError('engine-failed', `generation failed: ${errorText(err)}`, { cause: err });
    } finally {
      await sequence?.dispose().catch(() => {});
      this.release();
    }
  }

  /** Resolves true with a sequence slot held, false when `signal` aborted first. */
  private acquire(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    if (this.free > 0) {
      this.free--;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const wake = () => {
        signal.removeEventListener('abort', onAbort);
        resolve(true);
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(wake);
        if (i >= 0) this.waiting.splice(i, 1);
        resolve(false);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(wake);
    });
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}
