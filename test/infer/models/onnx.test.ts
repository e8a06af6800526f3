/**
 * The tiny ONNX embedding bundle generator: deterministic bytes, a graph that ONNX Runtime loads with
 * a BERT export's interface, and a tokenizer.json that transformers.js reads as BERT's WordPiece.
 */
import { BertTokenizer } from '@huggingface/transformers';
import { InferenceSession, Tensor } from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { readTar } from '../../../src/infer/models/tar.js';
import {
  TINY_VOCAB_MAX,
  TINY_VOCAB_MIN,
  tinyOnnxEmbeddingBundle,
  tinyOnnxEmbeddingFiles,
} from '../../../src/infer/testing/onnx.js';

const dec = new TextDecoder();
const json = (b: Uint8Array | undefined) => JSON.parse(dec.decode(b));

function ids(rows: number[][]): Tensor {
  return new Tensor('int64', BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0]!.length]);
}

async function run(model: Uint8Array, rows: number[][]) {
  const session = await InferenceSession.create(model, { intraOpNumThreads: 1 });
  const feeds: Record<string, Tensor> = {
    input_ids: ids(rows),
    attention_mask: ids(rows.map((r) => r.map(() => 1))),
  };
  if (session.inputNames.includes('token_type_ids'))
    feeds['token_type_ids'] = ids(rows.map((r) => r.map(() => 0)));
  const out = await session.run(feeds);
  await session.release();
  return { session, out };
}

describe('tinyOnnxEmbeddingBundle', () => {
  it('is a tar of a Hugging Face-style ONNX model directory', () => {
    const files = readTar(tinyOnnxEmbeddingBundle());
    expect([...files.keys()].sort()).toEqual([
      'config.json',
      'onnx/model.onnx',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    expect(json(files.get('config.json'))).toMatchObject({
      model_type: 'bert',
      hidden_size: 32,
      vocab_size: 512,
    });
    expect(json(files.get('tokenizer_config.json'))).toMatchObject({
      tokenizer_class: 'BertTokenizer',
      model_max_length: 512,
    });
  });

  it('is byte-identical for equal options and differs in its weights for another seed', () => {
    expect(tinyOnnxEmbeddingBundle({ seed: 7 })).toEqual(tinyOnnxEmbeddingBundle({ seed: 7 }));
    const a = tinyOnnxEmbeddingFiles({ seed: 7 });
    const b = tinyOnnxEmbeddingFiles({ seed: 8 });
    expect(a.get('onnx/model.onnx')).not.toEqual(b.get('onnx/model.onnx'));
    expect(a.get('tokenizer.json')).toEqual(b.get('tokenizer.json'));
  });

  it('declares the inputs and outputs of a BERT export and computes [batch, seq, dim]', async () => {
    const model = tinyOnnxEmbeddingFiles({ dimensions: 16 }).get('onnx/model.onnx')!;
    const { session, out } = await run(model, [
      [2, 40, 41, 3],
      [2, 41, 40, 3],
    ]);
    expect(session.inputNames).toEqual(['input_ids', 'attention_mask', 'token_type_ids']);
    expect(session.outputNames).toEqual(['last_hidden_state']);
    const h = out['last_hidden_state']!;
    expect(h.type).toBe('float32');
    expect(h.dims).toEqual([2, 4, 16]);
    const v = h.data as Float32Array;
    const row = (b: number, t: number) => Array.from(v.subarray((b * 4 + t) * 16, (b * 4 + t + 1) * 16));
    // Tokens do not interact: a token's vector is the same wherever it stands.
    expect(row(0, 1)).toEqual(row(1, 2));
    expect(row(0, 1)).not.toEqual(row(0, 2));
    expect(v.every((x) => Math.abs(x) < 1)).toBe(true);
    expect(new Set(v).size).toBeGreaterThan(50);
  });

  it('can leave out token_type_ids, and can pool itself as sentence-transformers exports do', async () => {
    const noTypes = await run(tinyOnnxEmbeddingFiles({ tokenTypeIds: false }).get('onnx/model.onnx')!, [
      [2, 3],
    ]);
    expect(noTypes.session.inputNames).toEqual(['input_ids', 'attention_mask']);
    const pooled = await run(
      tinyOnnxEmbeddingFiles({ output: 'sentence_embedding' }).get('onnx/model.onnx')!,
      [[2, 40, 3]],
    );
    expect(pooled.session.outputNames).toEqual(['token_embeddings', 'sentence_embedding']);
    const tokens = pooled.out['token_embeddings']!.data as Float32Array;
    const mean = Array.from({ length: 32 }, (_, d) => (tokens[d]! + tokens[32 + d]! + tokens[64 + d]!) / 3);
    const sentence = Array.from(pooled.out['sentence_embedding']!.data as Float32Array);
    for (const [d, x] of sentence.entries()) expect(x).toBeCloseTo(mean[d]!, 6);
  });

  it('has a WordPiece tokenizer that transformers.js reads as BERT', () => {
    const files = tinyOnnxEmbeddingFiles({ vocabSize: TINY_VOCAB_MAX });
    const tok = new BertTokenizer(
      json(files.get('tokenizer.json')),
      json(files.get('tokenizer_config.json')),
    );
    const vocab = json(files.get('tokenizer.json')).model.vocab as Record<string, number>;
    expect(Object.keys(vocab)).toHaveLength(TINY_VOCAB_MAX);
    expect(Object.values(vocab).sort((a, b) => a - b)).toEqual([...Array(TINY_VOCAB_MAX).keys()]);
    const encoded = tok.encode('Hello, WORLD! Zyx');
    expect(tok.convert_tokens_to_ids(['[CLS]', 'hello', ',', 'world', '!', 'zy', '##x', '[SEP]'])).toEqual(
      encoded,
    );
    expect(tok.encode('日本')).toEqual([2, 1, 1, 3]);
    expect(tok.pad_token_id).toBe(0);
  });

  it('refuses options it cannot honour', () => {
    expect(() => tinyOnnxEmbeddingBundle({ vocabSize: TINY_VOCAB_MIN - 1 })).toThrow(RangeError);
    expect(() => tinyOnnxEmbeddingBundle({ vocabSize: TINY_VOCAB_MAX + 1 })).toThrow(/vocabSize/);
    expect(() => tinyOnnxEmbeddingBundle({ dimensions: 0 })).toThrow(/dimensions/);
    expect(() => tinyOnnxEmbeddingBundle({ seed: -1 })).toThrow(/seed/);
    expect(() => tinyOnnxEmbeddingBundle({ seed: 1.5 })).toThrow(/seed/);
    expect(() => tinyOnnxEmbeddingBundle({ contextLength: 2 })).toThrow(/contextLength/);
  });
});
