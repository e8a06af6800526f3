/** Regressions for defects found in review: each test failed before its fix. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDefaultRegistry, offlineSource } from '../../src/attest/index.js';
import { Broker } from '../../src/kbs/broker.js';
import { buildLogEntry, KbsLogStore, signCheckpointNow } from '../../src/kbs/log.js';
import { parseTeePubkey } from '../../src/kbs/protocol.js';
import { masterKeyFromText, SecretBox } from '../../src/kbs/secrets.js';
import { MemoryStore } from '../../src/kbs/store/index.js';
import { sealBytes } from '../../src/seal/container.js';
import { generateHpkeKeyPair } from '../../src/seal/keys.js';
import { generateNoteSigner, parseCheckpoint, TransparencyLog } from '../../src/translog/index.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const entry = (i: number) => ({ kind: 'release', tenant: 't', actor: 'tee', subject: `s${i}`, details: {} });

it('concurrent checkpoint signing never signs a root the log does not have', async () => {
  const store = new MemoryStore({ buildLogEntry });
  await store.migrate();
  const log = new KbsLogStore(store);
  const { signer } = await generateNoteSigner('review/log');
  for (let i = 0; i < 20; i++) await store.appendLog(entry(i));
  for (let round = 0; round < 10; round++) {
    const a = signCheckpointNow(store, log, 'review/log', signer);
    await Promise.resolve();
    const b = signCheckpointNow(store, log, 'review/log', signer);
    await store.appendLog(entry(100 + round));
    const c = signCheckpointNow(store, log, 'review/log', signer);
    await Promise.all([a, b, c]);
  }
  const truth = new TransparencyLog(log, 'review/log');
  for (const { note } of await store.checkpoints()) {
    const cp = parseCheckpoint(note);
    expect(Buffer.from(cp.root).equals(Buffer.from(await truth.root(cp.size)))).toBe(true);
  }
});

describe('a session whose token expired', () => {
  it('answers 401 token-expired (so the client attests again), not 500', async () => {
    let now = new Date();
    const store = new MemoryStore({ buildLogEntry });
    await store.migrate();
    const earKey = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const broker = new Broker({
      store,
      secrets: new SecretBox([await masterKeyFromText(btoa('k'.repeat(32)), 'test')]),
      registry: createDefaultRegistry(),
      collateral: offlineSource,
      earKey,
      devMode: true,
      sessionTtlSeconds: 3600,
      tokenTtlSeconds: 60,
      now: () => now,
    });
    const { session } = await broker.auth({ version: '0.4.0', tee: 'sample' });
    const kp = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
    const j = await crypto.subtle.exportKey('jwk', kp.publicKey);
    const teePubkey = { kty: 'EC' as const, crv: 'P-256' as const, x: j.x!, y: j.y! };
    const { primaryRuntimeDataHash, reportDataField } = await import('../../src/kbs/protocol.js');
    const rd = reportDataField(await primaryRuntimeDataHash(teePubkey, session.nonce, ''));
    const evidence = await (await sampleAttester()).primaryEvidence(rd);
    await broker.attest(session.id, {
      'runtime-data': { nonce: session.nonce, 'tee-pubkey': teePubkey },
      'tee-evidence': { primary_evidence: evidence, additional_evidence: '' },
    });
    now = new Date(now.getTime() + 30 * 60 * 1000);
    await expect(broker.resource({ sessionId: session.id }, 'owner/models/kek1')).rejects.toMatchObject({
      status: 401,
      type: 'token-expired',
    });
  });
});

describe('broker input the review found', () => {
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

  it('keeps the log from tenant-bound auditors and answers bad ranges with 400', async () => {
    const scoped = await b.admin('auditor', 'acme');
    for (const path of ['/admin/v1/log/entries', '/admin/v1/log/bundle']) {
      expect((await b.call('GET', path, scoped)).status).toBe(403);
    }
    const auditor = await b.admin('global-auditor');
    for (const q of ['from=1.5', 'from=abc', 'to=-1', 'from=5&to=2', 'to=99999']) {
      for (const path of ['/admin/v1/log/entries', '/admin/v1/log/bundle']) {
        const r = await b.call('GET', `${path}?${q}`, auditor);
        expect([path, q, r.status]).toEqual([path, q, 400]);
      }
    }
  });
});

it('an all-zero X25519 recipient key is a bad key, not an internal error', async () => {
  await generateHpkeKeyPair();
  await expect(
    sealBytes(new Uint8Array(3), { recipients: [{ type: 'hpke', publicKey: new Uint8Array(32) }] }),
  ).rejects.toMatchObject({ code: 'bad-key' });
});

describe('RSA TEE keys (review finding)', () => {
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
