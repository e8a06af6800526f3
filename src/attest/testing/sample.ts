/**
 * Test authority for the `sample` TEE: signs sample evidence with arbitrary (even invalid) members, so
 * tests can prove that the verifier refuses each malformed or dishonest variant for the right reason.
 */
import { toBase64Url } from '../../util/index.js';
import { signSampleBody } from '../sample/attester.js';

export interface SampleForgery {
  keyPair: CryptoKeyPair;
  publicJwk: JsonWebKey;
  /** Signs `{...defaults, ...overrides}`; members set to `undefined` are left out. */
  sign(overrides?: Record<string, unknown>): Promise<Uint8Array>;
}

export async function createSampleForgery(): Promise<SampleForgery> {
  const keyPair = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
  const full = await crypto.subtle.exportKey('jwk', keyPair.publicKey);
  const publicJwk = { kty: 'EC', crv: 'P-256', x: full.x, y: full.y };
  return {
    keyPair,
    publicJwk,
    sign(overrides = {}) {
      const body = {
        tee: 'sample',
        report_data: toBase64Url(new Uint8Array(32)),
        measurement: '00'.repeat(48),
        debug: false,
        public_key: publicJwk,
        ...overrides,
      };
      return signSampleBody(body, keyPair.privateKey);
    },
  };
}
