import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type ChatHistoryItem,
  type ChatWrapper,
  GeneralChatWrapper,
  type Llama,
  LlamaChat,
  type LlamaModel,
  resolveChatWrapper,
} from 'node-llama-cpp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tinyLlamaGguf } from '../../src/infer/testing/gguf.js';
import { writeLlamaGguf } from '../../src/train/llama/gguf.js';
import { initParams, type LlamaShape } from '../../src/train/llama/model.js';
import { VOCAB_SIZE } from '../../src/train/llama/tokenizer.js';
import { type ChatDataset, loadChatDataset } from '../../src/train/lora/dataset.js';
import { LoraError } from '../../src/train/lora/errors.js';
import { testLlama } from './llamacpp.js';

// The dataset must give the trainer the very token ids serving feeds the model: each prompt is
// compared with what node-llama-cpp's LlamaChat actually evaluates for the same history (the tokens
// in its context sequence after a one-token answer), and each answer with its own tokens + the
// end-of-turn token.

const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-dataset-'));
const chatml = join(dir, 'chatml.gguf');
const general = join(dir, 'general.gguf');
const charVocab = join(dir, 'char.gguf');
let llama: Llama;
let chatmlModel: LlamaModel;
let generalModel: LlamaModel;
let lineNo = 0;

const IM_END = 4;
const EOS = 2;

function file(lines: string | Uint8Array): string {
  const p = join(dir, `data-${++lineNo}.jsonl`);
  writeFileSync(p, lines);
  return p;
}

function jsonl(...examples: unknown[]): string {
  return `${examples.map((e) => JSON.stringify(e)).join('\n')}\n`;
}

type Msg = { role: 'system' | 'user' | 'assistant'; content: string };

function history(messages: Msg[]): ChatHistoryItem[] {
  return messages.map((m) =>
    m.role === 'system'
      ? { type: 'system', text: m.content }
      : m.role === 'user'
        ? { type: 'user', text: m.content }
        : { type: 'model', response: [m.content] },
  );
}

/** The tokens LlamaChat evaluates before answering `messages` (serving's chat path). */
async function servedPrompt(model: LlamaModel, wrapper: ChatWrapper, messages: Msg[]): Promise<number[]> {
  const context = await model.createContext({ contextSize: 256, threads: 1 });
  try {
    const sequence = context.getSequence();
    const chat = new LlamaChat({ contextSequence: sequence, chatWrapper: wrapper });
    await chat.generateResponse([...history(messages), { type: 'model', response: [] }], {
      maxTokens: 1,
      temperature: 0,
    });
    // The sampled token is not fed back: the sequence holds the prompt, maybe plus that one token.
    return Array.from(sequence.contextTokens, Number);
  } finally {
    await context.dispose();
  }
}

function tokenize(model: LlamaModel, text: string): number[] {
  return Array.from(model.tokenize(text, false, 'trimLeadingSpace'), Number);
}

/** The runs of completion tokens, each as its token ids. */
function answers(d: ChatDataset, index = 0): number[][] {
  const { tokens, completion } = d.examples[index]!;
  const runs: number[][] = [];
  for (let i = 0; i < tokens.length; i++) {
    if (completion[i] !== 1) continue;
    if (i === 0 || completion[i - 1] !== 1) runs.push([]);
    runs[runs.length - 1]!.push(tokens[i]!);
  }
  return runs;
}

async function refusal(p: Promise<unknown>): Promise<LoraError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LoraError);
  return err as LoraError;
}

beforeAll(async () => {
  writeFileSync(chatml, tinyLlamaGguf({ seed: 3, context: 256 }).bytes());
  writeFileSync(general, tinyLlamaGguf({ seed: 3, context: 256, chatTemplate: null }).bytes());
  const shape: LlamaShape = { vocab: VOCAB_SIZE, dim: 16, layers: 1, heads: 2, kvHeads: 1, ffn: 32 };
  writeFileSync(
    charVocab,
    writeLlamaGguf({ shape, context: 64, params: initParams(shape, 1), name: 'char-test' }),
  );
  llama = await testLlama();
  chatmlModel = await llama.loadModel({ modelPath: chatml, gpuLayers: 0 });
  generalModel = await llama.loadModel({ modelPath: general, gpuLayers: 0 });
});

afterAll(async () => {
  await chatmlModel?.dispose();
  await generalModel?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

const QA: Msg[] = [
  { role: 'system', content: 'you are a model.' },
  { role: 'user', content: 'hello world, what is the answer?' },
  { role: 'assistant', content: 'the answer is yes.' },
];

describe('loadChatDataset with a ChatML base', () => {
  it('gives the prompt serving feeds, then the answer and <|im_end|> as the completion', async () => {
    const d = await loadChatDataset(file(jsonl({ messages: QA })), chatml, { maxTokens: 256 });
    expect(d.template).toBe('ChatML');
    expect(d.vocabSize).toBe(607);
    expect(d.truncated).toBe(0);
    expect(d.examples).toHaveLength(1);
    const { tokens, completion } = d.examples[0]!;
    expect(tokens.length).toBe(completion.length);
    const start = completion.indexOf(1);
    const served = await servedPrompt(chatmlModel, resolveChatWrapper(chatmlModel), QA.slice(0, 2));
    expect([...tokens.slice(0, start)]).toEqual(served.slice(0, start));
    expect(served.length - start).toBeLessThanOrEqual(1);
    // Exactly the answer's tokens and the end-of-turn token, to the end of the example.
    expect(answers(d)).toEqual([[...tokenize(chatmlModel, 'the answer is yes.'), IM_END]]);
    expect(start + answers(d)[0]!.length).toBe(tokens.length);
    // The prompt ends where the assistant's turn starts.
    expect(chatmlModel.detokenize(tokens.slice(0, start) as never, true)).toMatch(
      /<\|im_start\|> ?assistant\n$/,
    );
  });

  it('a prompt/completion pair is the same as its messages form', async () => {
    const pair = await loadChatDataset(
      file(jsonl({ prompt: 'what is the answer?', completion: 'yes.' })),
      chatml,
      { maxTokens: 256 },
    );
    const messages = await loadChatDataset(
      file(
        jsonl({
          messages: [
            { role: 'user', content: 'what is the answer?' },
            { role: 'assistant', content: 'yes.' },
          ],
        }),
      ),
      chatml,
      { maxTokens: 256 },
    );
    expect(pair.examples).toEqual(messages.examples);
  });

  it('a conversation is one example with every answer masked, each after the prompt serving gives it', async () => {
    const conv: Msg[] = [
      ...QA,
      { role: 'user', content: 'and then?' },
      { role: 'assistant', content: 'then no.' },
    ];
    const d = await loadChatDataset(file(jsonl({ messages: conv })), chatml, { maxTokens: 256 });
    expect(d.examples).toHaveLength(1);
    const { tokens, completion } = d.examples[0]!;
    expect(answers(d)).toEqual([
      [...tokenize(chatmlModel, 'the answer is yes.'), IM_END],
      [...tokenize(chatmlModel, 'then no.'), IM_END],
    ]);
    const wrapper = resolveChatWrapper(chatmlModel);
    for (const [upTo, answerIndex] of [
      [2, 0],
      [4, 1],
    ] as const) {
      const served = await servedPrompt(chatmlModel, wrapper, conv.slice(0, upTo));
      // Where the answer starts: the n-th run of completion tokens.
      let start = -1;
      for (let i = 0, run = -1; i < tokens.length; i++) {
        if (completion[i] === 1 && (i === 0 || completion[i - 1] === 0) && ++run === answerIndex) start = i;
      }
      expect([...tokens.slice(0, start)]).toEqual(served.slice(0, start));
      expect(served.length - start).toBeLessThanOrEqual(1);
    }
    // Everything else (the "\n" after <|im_end|>, the user's turn) is prompt.
    expect(completion.reduce((a, b) => a + b, 0)).toBe(answers(d).flat().length);
  });

  it('reads every line, skipping blank ones; CRLF, a byte-order mark and no final newline are fine', async () => {
    const lines =
      '\uFEFF' +
      [
        JSON.stringify({ prompt: 'one', completion: 'two' }),
        '',
        '   ',
        JSON.stringify({ messages: QA }),
        JSON.stringify({ prompt: 'the', completion: 'world' }),
      ].join('\r\n');
    const d = await loadChatDataset(file(lines), chatml, { maxTokens: 256 });
    expect(d.examples).toHaveLength(3);
    expect(answers(d, 2)).toEqual([[...tokenize(chatmlModel, 'world'), IM_END]]);
  });

  it('keeps the start of a longer example, counts it as truncated, and refuses one with no answer left', async () => {
    const full = await loadChatDataset(file(jsonl({ messages: QA })), chatml, { maxTokens: 256 });
    const n = full.examples[0]!.tokens.length;
    const start = full.examples[0]!.completion.indexOf(1);
    const data = file(jsonl({ messages: QA }, { prompt: 'one', completion: 'two' }));
    const cut = await loadChatDataset(data, chatml, { maxTokens: start + 2 });
    expect(cut.truncated).toBe(1);
    expect(cut.examples).toHaveLength(2);
    expect([...cut.examples[0]!.tokens]).toEqual([...full.examples[0]!.tokens.slice(0, start + 2)]);
    expect([...cut.examples[0]!.completion]).toEqual([...full.examples[0]!.completion.slice(0, start + 2)]);
    expect(n).toBeGreaterThan(start + 2);

    const none = await refusal(loadChatDataset(data, chatml, { maxTokens: start }));
    expect(none.code).toBe('bad-input');
    expect(none.message).toBe(
      `line 1: the prompt alone takes ${start} tokens, a row holds ${start} (hyperparameters.seq + 1): none of the answer would be trained; raise seq or shorten the prompt`,
    );
  });

  it('the char-vocabulary model of the llama trainer tokenizes within its 356 tokens', async () => {
    const d = await loadChatDataset(file(jsonl({ messages: QA })), charVocab, { maxTokens: 512 });
    expect(d.template).toBe('ChatML');
    expect(d.vocabSize).toBe(VOCAB_SIZE);
    const { tokens } = d.examples[0]!;
    expect(Math.max(...tokens)).toBeLessThan(VOCAB_SIZE);
    // One token per character of the answer, then <|im_end|> (the same id in this vocabulary).
    expect(answers(d)[0]!.length).toBe('the answer is yes.'.length + 1);
    expect(answers(d)[0]!.at(-1)).toBe(IM_END);
  });
});

describe('loadChatDataset with a base without a chat template (General format)', () => {
  it('formats as serving does and ends the answer with EOS', async () => {
    const d = await loadChatDataset(file(jsonl({ messages: QA })), general, { maxTokens: 256 });
    expect(d.template).toBe('General');
    const { tokens, completion } = d.examples[0]!;
    const start = completion.indexOf(1);
    const served = await servedPrompt(generalModel, new GeneralChatWrapper(), QA.slice(0, 2));
    expect([...tokens.slice(0, start)]).toEqual(served.slice(0, start));
    expect(served.length - start).toBeLessThanOrEqual(1);
    expect(answers(d)).toHaveLength(1);
    expect(answers(d)[0]!.at(-1)).toBe(EOS);
    expect(generalModel.detokenize(answers(d)[0]!.slice(0, -1) as never, false)).toBe('the answer is yes.');
  });

  it('splits a conversation into one example per answer, each with the prompt serving gives it', async () => {
    // The General format ends a turn with text, not EOS: a single sequence with EOS inside would
    // differ from what serving feeds for the second answer.
    const conv: Msg[] = [
      ...QA,
      { role: 'user', content: 'and then?' },
      { role: 'assistant', content: 'then no.' },
    ];
    const d = await loadChatDataset(file(jsonl({ messages: conv })), general, { maxTokens: 256 });
    expect(d.examples).toHaveLength(2);
    const served = await servedPrompt(generalModel, new GeneralChatWrapper(), conv.slice(0, 4));
    const second = d.examples[1]!;
    const start = second.completion.indexOf(1);
    expect([...second.tokens.slice(0, start)]).toEqual(served.slice(0, start));
    expect(answers(d, 1)).toEqual([[...tokenize(generalModel, 'then no.'), EOS]]);
  });
});

describe('loadChatDataset with a template node-llama-cpp runs as Jinja', () => {
  it("ends each answer with the token the template closes a turn with, after serving's prompt", async () => {
    const template =
      "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + '</s>' }}{% endfor %}" +
      "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}";
    const jinja = join(dir, 'jinja.gguf');
    writeFileSync(jinja, tinyLlamaGguf({ seed: 3, context: 256, chatTemplate: template }).bytes());
    const conv: Msg[] = [
      ...QA,
      { role: 'user', content: 'and then?' },
      { role: 'assistant', content: 'then no.' },
    ];
    const d = await loadChatDataset(file(jsonl({ messages: conv })), jinja, { maxTokens: 256 });
    expect(d.template).toBe('JinjaTemplate');
    expect(d.examples).toHaveLength(1);
    expect(answers(d).map((a) => a.at(-1))).toEqual([EOS, EOS]);
    const model = await llama.loadModel({ modelPath: jinja, gpuLayers: 0 });
    try {
      const served = await servedPrompt(model, resolveChatWrapper(model), conv.slice(0, 4));
      const { tokens, completion } = d.examples[0]!;
      const start = completion.lastIndexOf(0) + 1;
      expect([...tokens.slice(0, start)]).toEqual(served.slice(0, start));
      expect(model.detokenize(answers(d)[1]!.slice(0, -1) as never, false)).toBe('then no.');
    } finally {
      await model.dispose();
    }
    // node-llama-cpp matches a Jinja template against its own wrappers first: seconds on a busy machine.
  }, 60_000);
});

describe('loadChatDataset refuses bad input in one line naming the line', () => {
  const ok = JSON.stringify({ prompt: 'one', completion: 'two' });
  const cases: [string, string | Uint8Array, string][] = [
    ['invalid JSON', `${ok}\n\n{"prompt": "one",\n`, 'line 3 is not valid JSON (a syntax error)'],
    ['not an object', `${ok}\n[1, 2]\n`, 'line 2: an example is a JSON object'],
    [
      'an unknown field',
      `${ok}\n{"prompt": "a", "completion": "b", "weight": 1}\n`,
      'line 2: has an unknown field',
    ],
    [
      'messages beside prompt',
      '{"messages": [], "prompt": "a"}',
      'line 1: has a field other than "messages"',
    ],
    ['a prompt without completion', '{"prompt": "a"}', 'line 1: no "completion"'],
    ['an empty completion', '{"prompt": "a", "completion": " "}', 'line 1: "completion" is empty'],
    ['an empty messages list', '{"messages": []}', 'line 1: "messages" must be a non-empty list'],
    [
      'a wrong role',
      jsonl({ messages: [{ role: 'bot', content: 'a' }] }),
      'line 1: message 1 has a role other than system, user and assistant',
    ],
    [
      'an unknown message field',
      jsonl({ messages: [{ role: 'user', content: 'a', name: 'x' }] }),
      'line 1: message 1 has a field other than "role" and "content"',
    ],
    [
      'empty content',
      jsonl({
        messages: [
          { role: 'user', content: '' },
          { role: 'assistant', content: 'b' },
        ],
      }),
      'line 1: message 1 (user) has empty content',
    ],
    [
      'content that is not a string',
      jsonl({ messages: [{ role: 'user', content: ['a'] }] }),
      'line 1: message 1 (user): content must be a string',
    ],
    [
      'no assistant message',
      `${ok}\n${jsonl({ messages: [{ role: 'user', content: 'a' }] })}`,
      'line 2: no assistant message',
    ],
    [
      'a message after the last answer',
      jsonl({
        messages: [
          { role: 'user', content: 'a' },
          { role: 'assistant', content: 'b' },
          { role: 'user', content: 'c' },
        ],
      }),
      'line 1: message 3 (user) comes after the last assistant message',
    ],
    ['an empty file', '', 'the dataset has no examples'],
    ['only blank lines', '\n  \n\r\n', 'the dataset has no examples'],
    [
      'bytes that are not UTF-8',
      new Uint8Array([
        ...new TextEncoder().encode(`${ok}\n{"prompt": "`),
        0xff,
        0xfe,
        ...new TextEncoder().encode('"}\n'),
      ]),
      'line 2 is not valid UTF-8',
    ],
  ];
  for (const [what, content, message] of cases) {
    it(what, async () => {
      const err = await refusal(loadChatDataset(file(content), chatml, { maxTokens: 64 }));
      expect(err.code).toBe('bad-input');
      expect(err.message.startsWith(message), err.message).toBe(true);
      expect(err.message).not.toContain('\n');
    });
  }

  it('a missing dataset, a missing or non-GGUF base, and a bad maxTokens', async () => {
    const data = file(jsonl({ prompt: 'a', completion: 'b' }));
    const noData = await refusal(loadChatDataset(join(dir, 'nope.jsonl'), chatml, { maxTokens: 64 }));
    expect([noData.code, noData.message]).toEqual([
      'bad-input',
      `cannot read the dataset ${join(dir, 'nope.jsonl')}: no such file`,
    ]);
    const noBase = await refusal(loadChatDataset(data, join(dir, 'nope.gguf'), { maxTokens: 64 }));
    expect(noBase.code).toBe('bad-model');
    const notGguf = await refusal(loadChatDataset(data, data, { maxTokens: 64 }));
    expect(notGguf.code).toBe('bad-model');
    for (const maxTokens of [1, 2.5, Number.NaN]) {
      const err = await refusal(loadChatDataset(data, chatml, { maxTokens }));
      expect(err.code).toBe('bad-hyperparameter');
    }
  });
});
