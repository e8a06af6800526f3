/**
 * STUB with the contract's signature only: helper B writes the real chat dataset reader (tokenizing
 * with the base's own tokenizer and chat template); the integrator takes B's file in place of this one.
 */

export interface ChatExample {
  tokens: Int32Array;
  /** completion[i] = 1 when the loss counts tokens[i] (predicted from tokens[0..i-1]). */
  completion: Uint8Array;
}

export interface ChatDataset {
  examples: ChatExample[];
  truncated: number;
  template: string;
  vocabSize: number;
}

export async function loadChatDataset(
  _dataPath: string,
  _basePath: string,
  _options: { maxTokens: number },
): Promise<ChatDataset> {
  throw new Error('not yet');
}
