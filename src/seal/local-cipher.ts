/** The fastest chunk cipher available in this Node process (native addon when built, else Web Crypto). */
import { type ChunkCipher, webCryptoCipher } from './aead.js';

export function localCipher(): ChunkCipher {
  return webCryptoCipher;
}
