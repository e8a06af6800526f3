/**
 * What the attest endpoint does with a TEE key it cannot use (400 unusable-key, never 500), with RSA keys
 * too weak to count, and with a nonce whose evidence was refused (used up).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTeePubkey } from '../../src/wire/kbs.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

describe('attest input: the TEE key and the nonce', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
  });
  afterAll(() => b.close());

  async function session() {
    const r = await fetch(new URL('/kbs/v0/auth', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: '0.4.0', tee: 'sample' }),
    });
    return { cookie: r.headers.get('set-cookie')!.split(';')[0]!, nonce: (await r.json()).nonce as string };
  }
  const attest = (cookie: string, body: unknown) =>
    fetch(new URL('/kbs/v0/attest', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', cookie },
      body: JSON.stringify(body),
    });

  it('refuses undecodable and off-curve keys with 400 unusable-key, never 500', async () => {
    for (const key of [
      { kty: 'EC', crv: 'P-256', x: 'A'.repeat(41), y: 'A'.repeat(43) },
      { kty: 'RSA', n: 'A'.repeat(401), e: 'AQAB' },
      { kty: 'EC', crv: 'P-256', x: `${'A'.repeat(42)}E`, y: `${'A'.repeat(42)}E` },
      { kty: 'RSA', n: 'A'.repeat(342), e: 'AQAB', alg: 'RSA1_5' },
    ]) {
      const { cookie, nonce } = await session();
      const r = await attest(cookie, {
        'runtime-data': { nonce, 'tee-pubkey': key },
        'tee-evidence': { primary_evidence: {}, additional_evidence: '' },
      });
      expect([JSON.stringify(key).slice(0, 40), r.status]).toEqual([JSON.stringify(key).slice(0, 40), 400]);
      expect((await r.json()).type).toMatch(/unusable-key/);
    }
  });

  it('uses the nonce up when evidence is refused', async () => {
    const { cookie, nonce } = await session();
    const kp = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const j = await crypto.subtle.exportKey('jwk', kp.publicKey);
    const teePubkey = { kty: 'EC', crv: 'P-256', x: j.x, y: j.y };
    const bad = await (await sampleAttester()).primaryEvidence(new Uint8Array(64));
    expect(
      (
        await attest(cookie, {
          'runtime-data': { nonce, 'tee-pubkey': teePubkey },
          'tee-evidence': { primary_evidence: bad, additional_evidence: '' },
        })
      ).status,
    ).toBe(401);
    const again = await attest(cookie, {
      'runtime-data': { nonce, 'tee-pubkey': teePubkey },
      'tee-evidence': { primary_evidence: bad, additional_evidence: '' },
    });
    expect(again.status).toBe(401);
    expect((await again.json()).type).toMatch(/nonce-used/);
  });
});

describe('RSA TEE keys', () => {
  const b64u = (b: Uint8Array) => Buffer.from(b).toString('base64url');
  const modulus = (bits: number, lead = 0) => {
    const n = new Uint8Array(lead + bits / 8).fill(0xab);
    n.fill(0, 0, lead);
    n[n.length - 1] = 0xc5;
    return b64u(n);
  };
  it('counts the modulus from its first set bit and wants an odd exponent of at least 3', () => {
    expect(parseTeePubkey({ kty: 'RSA', n: modulus(2048), e: 'AQAB' })).toMatchObject({ kty: 'RSA' });
    for (const [key, reason] of [
      // 1024 bits padded with 128 zero bytes to look like 2048.
      [{ kty: 'RSA', n: modulus(1024, 128), e: 'AQAB' }, /modulus is 1024 bits/],
      [{ kty: 'RSA', n: modulus(2048), e: 'AQ' }, /exponent e must be odd and at least 3/],
      [{ kty: 'RSA', n: modulus(2048), e: 'AAE' }, /exponent e must be odd and at least 3/],
      [{ kty: 'RSA', n: modulus(2048), e: 'AQAA' }, /exponent e must be odd and at least 3/],
    ] as const)
      expect(() => parseTeePubkey(key), JSON.stringify(key).slice(0, 60)).toThrow(reason);
  });
});
