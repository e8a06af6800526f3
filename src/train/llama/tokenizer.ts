/**
 * The trainer's character-level vocabulary, written so that llama.cpp's SentencePiece tokenizer
 * (`tokenizer.ggml.model = "llama"`) splits any text exactly as `encode` does: every piece is a single
 * character, so no bigram merge ever applies, and characters outside the vocabulary fall back to
 * their UTF-8 bytes (`<0xNN>`), as in llama.cpp's `resegment`. Spaces are escaped to '▁' (U+2581).
 * The GGUF says `add_space_prefix = false`, so no '▁' is put before the text: the model sees at
 * serving time exactly the characters it was trained on.
 */

/** llama.cpp's token types (llama_token_type). */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, BYTE: 6 } as const;

export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
export const IM_START_ID = 3;
export const IM_END_ID = 4;
const FIRST_BYTE_ID = 5;
const SPACE = '\u2581';

export interface Vocab {
  readonly tokens: readonly string[];
  readonly scores: readonly number[];
  readonly types: readonly number[];
}

function buildVocab(): Vocab {
  const tokens = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>'];
  const types: number[] = [
    TokenType.UNKNOWN,
    TokenType.CONTROL,
    TokenType.CONTROL,
    // ChatML markers as CONTROL tokens: `cloister serve`'s chat template emits them, and llama.cpp
    // recognises "<|im_end|>" as an end-of-turn token.
    TokenType.CONTROL,
    TokenType.CONTROL,
  ];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TokenType.BYTE);
  }
  tokens.push(SPACE);
  types.push(TokenType.NORMAL);
  for (let c = 0x21; c < 0x7f; c++) {
    tokens.push(String.fromCharCode(c));
    types.push(TokenType.NORMAL);
  }
  // Scores only rank merges, and single characters never merge: all zero.
  return { tokens, scores: tokens.map(() => 0), types };
}

/** The vocabulary every model of this trainer has (356 tokens). */
export const VOCAB: Vocab = buildVocab();
export const VOCAB_SIZE = VOCAB.tokens.length;

const PIECE_IDS = new Map<string, number>();
VOCAB.tokens.forEach((t, i) => {
  if (VOCAB.types[i] === TokenType.NORMAL) PIECE_IDS.set(t, i);
});

const utf8Encoder = new TextEncoder();

/**
 * Token ids of `text`, as llama.cpp tokenizes it without special tokens (no BOS, `<|im_start|>` read
 * as plain characters). `addSpacePrefix` mirrors `tokenizer.ggml.add_space_prefix`; this trainer's
 * files say false.
 */
export function encode(text: string, addSpacePrefix = false): Int32Array {
  const out: number[] = [];
  const escaped = (addSpacePrefix && text.length > 0 ? ' ' : '') + text;
  for (const ch of escaped) {
    const piece = ch === ' ' ? SPACE : ch;
    const id = PIECE_IDS.get(piece);
    if (id !== undefined) {
      out.push(id);
    } else {
      for (const b of utf8Encoder.encode(piece)) out.push(FIRST_BYTE_ID + b);
    }
  }
  return Int32Array.from(out);
}

/** The ChatML markers, read as their control tokens in a training corpus. */
const MARKERS = ['<|im_start|>', '<|im_end|>'];

/**
 * Token ids of a training corpus, as llama.cpp tokenizes with special tokens parsed: the ChatML
 * markers become their control tokens (what `cloister serve`'s chat template feeds the model), so a
 * corpus of ChatML conversations teaches the model to answer chats; everything else as {@link encode}.
 */
export function encodeCorpus(text: string): Int32Array {
  const parts: Int32Array[] = [];
  let rest = text;
  for (;;) {
    let at = -1;
    let marker = '';
    for (const m of MARKERS) {
      const i = rest.indexOf(m);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        marker = m;
      }
    }
    if (at < 0) break;
    parts.push(encode(rest.slice(0, at)), Int32Array.of(VOCAB.tokens.indexOf(marker)));
    rest = rest.slice(at + marker.length);
  }
  parts.push(encode(rest));
  const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Text of token ids; control and unknown tokens are left out. Invalid UTF-8 byte runs become U+FFFD. */
export function decode(ids: ArrayLike<number>): string {
  const bytes: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    const type = VOCAB.types[id];
    if (type === TokenType.BYTE) bytes.push(id - FIRST_BYTE_ID);
    else if (type === TokenType.NORMAL) {
      const piece = VOCAB.tokens[id]!;
      for (const b of utf8Encoder.encode(piece === SPACE ? ' ' : piece)) bytes.push(b);
    }
  }
  return new TextDecoder().decode(Uint8Array.from(bytes));
}

/** ChatML, which node-llama-cpp and `cloister serve` recognise. */
export const CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
