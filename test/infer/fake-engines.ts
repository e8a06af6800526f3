/**
 * Engines with scripted behaviour for the HTTP, gateway and client tests, so those tests exercise
 * queueing, streaming, aborts and errors exactly; the real engines have their own tests.
 */
import {
  type EmbeddingEngine,
  EngineError,
  type GenerateParams,
  type GenerationResult,
  type OnText,
  type TextEngine,
} from '../../src/infer/engine/types.js';

export class ScriptedTextEngine implements TextEngine {
  readonly kind = 'text';
  readonly contextLength = 64;
  aborted = 0;
  running = 0;
  maxRunning = 0;
  prompts: string[] = [];

  constructor(
    readonly parallel = 2,
    /** Delay before each token, ms. */
    private readonly tokenDelayMs = 1,
  ) {}

  /** "echo" of the prompt's words, one token per word, then "done". */
  private async generate(prompt: string, p: GenerateParams, onText: OnText): Promise<GenerationResult> {
    this.prompts.push(prompt);
    const promptTokens = prompt.split(/\s+/).filter(Boolean).length;
    const maxTokens = p.fitContext ? Math.min(p.maxTokens, this.contextLength - promptTokens) : p.maxTokens;
    if (promptTokens + maxTokens > this.contextLength || maxTokens < 1) {
      throw new EngineError(
        'prompt-too-long',
        `prompt of ${promptTokens} tokens + max_tokens ${p.maxTokens} exceeds the context of ${this.contextLength}`,
      );
    }
    const words = [
      ...prompt
        .split(/\s+/)
        .filter(Boolean)
        .map((w) => ` ${w}`),
      ' done',
    ];
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    try {
      let text = '';
      let n = 0;
      for (const w of words) {
        if (p.signal.aborted) {
          this.aborted++;
          return { text, finishReason: 'abort', promptTokens, completionTokens: n };
        }
        if (n >= maxTokens) return { text, finishReason: 'length', promptTokens, completionTokens: n };
        await new Promise((r) => setTimeout(r, this.tokenDelayMs));
        const next = text + w;
        const stop = p.stop.find((s) => next.includes(s));
        if (stop) {
          const cut = next.slice(0, next.indexOf(stop));
          if (cut.length > text.length) onText(cut.slice(text.length));
          return { text: cut, finishReason: 'stop', promptTokens, completionTokens: n + 1 };
        }
        onText(w);
        text = next;
        n++;
      }
      return { text, finishReason: 'stop', promptTokens, completionTokens: n };
    } finally {
      this.running--;
    }
  }

  complete(prompt: string, p: GenerateParams, onText: OnText) {
    return this.generate(prompt, p, onText);
  }

  chat(messages: { role: string; content: string }[], p: GenerateParams, onText: OnText) {
    return this.generate(messages.map((m) => m.content).join(' '), p, onText);
  }

  async close() {}
}

export class HashEmbeddingEngine implements EmbeddingEngine {
  readonly kind = 'embedding';
  readonly dimensions = 4;
  readonly contextLength = 32;
  readonly parallel = 1;

  async embed(inputs: string[]) {
    const vectors = inputs.map((s) => {
      const v = new Float32Array(4);
      for (let i = 0; i < s.length; i++) v[i % 4]! += s.charCodeAt(i);
      const n = Math.hypot(...v) || 1;
      return v.map((x) => x / n);
    });
    return { vectors, promptTokens: inputs.reduce((a, s) => a + s.length, 0) };
  }

  async close() {}
}
