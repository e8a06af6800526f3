/**
 * The contract between the inference server (src/infer) and the engines that run models: llama.cpp
 * for GGUF (llama.ts) and ONNX Runtime for ONNX embedding models (onnx.ts). The server owns HTTP,
 * queueing and encryption; an engine owns tokenising and running one loaded model.
 */

/** Why an engine refused a request; the server maps `status` onto the HTTP response. */
/**
 * Every refusal of an engine. Whose fault each is (the caller's: a long or empty prompt; the engine's or
 * the operator's: a bad model) is said once, in the inference server's status table (INFER_STATUS).
 */
export type EngineCode =
  | 'aborted'
  | 'bad-model'
  | 'bad-request'
  | 'engine-closed'
  | 'engine-failed'
  | 'prompt-too-long';

export class EngineError extends Error {
  override name = 'EngineError';
  constructor(
    readonly code: EngineCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface GenerateParams {
  /** Upper bound on generated tokens. */
  maxTokens: number;
  /**
   * True when the client gave no max_tokens: then `maxTokens` is only a default, and the engine lowers
   * it to what the context leaves after the prompt instead of refusing with `prompt-too-long`.
   */
  fitContext?: boolean;
  /** 0 = greedy. */
  temperature: number;
  topP: number;
  seed?: number;
  /** Generation ends before any of these strings; they are not part of the output. */
  stop: string[];
  /** Aborted when the client goes away: the engine stops within one token and resolves. */
  signal: AbortSignal;
}

export interface GenerationResult {
  text: string;
  /** `abort` when `signal` ended it. */
  finishReason: 'stop' | 'length' | 'abort';
  promptTokens: number;
  completionTokens: number;
}

/** Receives generated text as it is produced (possibly several tokens' worth at a time). */
export type OnText = (text: string) => void;

export interface TextEngine {
  readonly kind: 'text';
  /** Tokens the model can attend to; prompt + maxTokens beyond it is refused with `prompt-too-long`. */
  readonly contextLength: number;
  /** How many generations may run at once (llama.cpp context sequences). */
  readonly parallel: number;
  /** Raw completion of `prompt`. */
  complete(prompt: string, params: GenerateParams, onText: OnText): Promise<GenerationResult>;
  /** Chat completion, with the model's chat template (or a plain fallback when it has none). */
  chat(messages: ChatMessage[], params: GenerateParams, onText: OnText): Promise<GenerationResult>;
  close(): Promise<void>;
}

export interface EmbeddingResult {
  /** One L2-normalised vector per input, in input order. */
  vectors: Float32Array[];
  promptTokens: number;
}

export interface EmbeddingEngine {
  readonly kind: 'embedding';
  readonly dimensions: number;
  /** Longest input in tokens; longer input is refused with `prompt-too-long`. */
  readonly contextLength: number;
  readonly parallel: number;
  embed(inputs: string[], signal: AbortSignal): Promise<EmbeddingResult>;
  close(): Promise<void>;
}

export type Engine = TextEngine | EmbeddingEngine;
