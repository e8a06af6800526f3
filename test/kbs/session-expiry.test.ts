/** A KBS session whose attestation token has expired. */
import { describe, expect, it } from 'vitest';
import { createDefaultRegistry, offlineSource } from '../../src/attest/index.js';
import { Broker } from '../../src/kbs/broker.js';
import { buildLogEntry } from '../../src/kbs/log.js';
import { masterKeyFromText, SecretBox } from '../../src/kbs/secrets.js';
import { MemoryStore } from '../../src/kbs/store/index.js';
import { bindingReportData } from '../../src/wire/kbs.js';
import { sampleAttester } from './helpers.js';

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
    const rd = await bindingReportData(teePubkey, session.nonce, '');
    const evidence = await (await sampleAttester()).primaryEvidence(rd);
    await broker.attest(session.id, {
      'runtime-data': { nonce: session.nonce, 'tee-pubkey': teePubkey },
      'tee-evidence': { primary_evidence: evidence, additional_evidence: '' },
    });
    now = new Date(now.getTime() + 30 * 60 * 1000);
    await expect(broker.resource({ sessionId: session.id }, 'owner/models/kek1')).rejects.toMatchObject({
      code: 'token-expired',
    });
  });
});
