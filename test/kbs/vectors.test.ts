/**
 * The worked example of docs/kbs-protocol.md, as a test vector (docs/vectors/kbs-protocol.json): the
 * exact canonical runtime data, its SHA-384 and the report-data field for a fixed key and nonce, the
 * GPU nonce derivation, and a resource JWE that a fixed TEE key must decrypt.
 * Regenerate with UPDATE_VECTORS=1 only when the protocol changes.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { FlattenedEncrypt, importJWK } from 'jose';
import { describe, expect, it } from 'vitest';
import { deriveGpuNonce } from '../../src/attest/composite.js';
import { decryptResource } from '../../src/kbs/jwe.js';
import { toHex } from '../../src/util/bytes.js';
import { canonicalize } from '../../src/util/jcs.js';
import {
  deviceRuntimeDataHash,
  type EcPublicJwk,
  primaryRuntimeDataHash,
  reportDataField,
} from '../../src/wire/kbs.js';

const FILE = new URL('../../docs/vectors/kbs-protocol.json', import.meta.url);

type PrivateJwk = { kty: string; crv: string; x: string; y: string; d: string };
const NONCE = 'q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=';
const GPU_EVIDENCE = JSON.stringify({
  nvidia: { gpus: [{ arch: 'HOPPER', nonce: '…', evidence: '…', certificate: '…' }] },
});

interface Vector {
  teePubkey: EcPublicJwk;
  nonce: string;
  withoutDevices: { canonical: string; sha384: string; reportData: string };
  withGpu: {
    additionalEvidence: string;
    canonical: string;
    reportData: string;
    deviceCanonical: string;
    deviceBase: string;
    gpu0Nonce: string;
  };
  resource: { teePrivateKey: PrivateJwk; jwe: unknown; plaintext: string };
}

/** The TEE's ephemeral key is random in real sessions; the vector fixes one, generated once and published. */
async function newTeeKey(): Promise<PrivateJwk> {
  const kp = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
  return (await crypto.subtle.exportKey('jwk', kp.privateKey)) as PrivateJwk;
}

async function build(TEE_PRIVATE: PrivateJwk, existingJwe?: unknown): Promise<Vector> {
  const TEE_PUBKEY: EcPublicJwk = {
    kty: 'EC',
    crv: 'P-256',
    alg: 'ECDH-ES+A256KW',
    x: TEE_PRIVATE.x,
    y: TEE_PRIVATE.y,
  };
  const h0 = await primaryRuntimeDataHash(TEE_PUBKEY, NONCE, '');
  const h1 = await primaryRuntimeDataHash(TEE_PUBKEY, NONCE, GPU_EVIDENCE);
  const base = await deviceRuntimeDataHash(TEE_PUBKEY, NONCE);
  // A JWE is randomised (ephemeral ECDH key, IV): the published one is kept; a fresh one only when regenerating.
  const jwe =
    existingJwe ??
    (await new FlattenedEncrypt(new TextEncoder().encode('the model key'))
      .setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' })
      .encrypt(
        await importJWK({ kty: 'EC', crv: 'P-256', x: TEE_PUBKEY.x, y: TEE_PUBKEY.y }, 'ECDH-ES+A256KW'),
      ));
  return {
    teePubkey: TEE_PUBKEY,
    nonce: NONCE,
    withoutDevices: {
      canonical: canonicalize({ 'tee-pubkey': TEE_PUBKEY, nonce: NONCE, 'additional-evidence': '' }),
      sha384: toHex(h0),
      reportData: toHex(reportDataField(h0)),
    },
    withGpu: {
      additionalEvidence: GPU_EVIDENCE,
      canonical: canonicalize({
        'tee-pubkey': TEE_PUBKEY,
        nonce: NONCE,
        'additional-evidence': GPU_EVIDENCE,
      }),
      reportData: toHex(reportDataField(h1)),
      deviceCanonical: canonicalize({ 'tee-pubkey': TEE_PUBKEY, nonce: NONCE }),
      deviceBase: toHex(base),
      gpu0Nonce: toHex(await deriveGpuNonce(base, 0)),
    },
    resource: { teePrivateKey: TEE_PRIVATE, jwe, plaintext: 'the model key' },
  };
}

describe('KBS protocol worked example', async () => {
  const published =
    existsSync(FILE) && !process.env.UPDATE_VECTORS
      ? (JSON.parse(readFileSync(FILE, 'utf8')) as Vector)
      : undefined;
  const fresh = await build(
    published?.resource.teePrivateKey ?? (await newTeeKey()),
    published?.resource.jwe,
  );
  if (!published) writeFileSync(FILE, `${JSON.stringify(fresh, null, 2)}\n`);
  const v = published ?? fresh;

  it('reproduces the canonical runtime data and report data byte for byte', () => {
    expect(fresh.withoutDevices).toEqual(v.withoutDevices);
    expect(fresh.withGpu).toEqual(v.withGpu);
    expect(v.withoutDevices.canonical).toBe(
      `{"additional-evidence":"","nonce":"${NONCE}","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"${v.teePubkey.x}","y":"${v.teePubkey.y}"}}`,
    );
    expect(v.withoutDevices.reportData.endsWith('0'.repeat(32))).toBe(true);
  });

  it('the published resource JWE decrypts with the TEE key, and not with another key', async () => {
    const key = (await importJWK(v.resource.teePrivateKey, 'ECDH-ES+A256KW')) as CryptoKey;
    const jwe = v.resource.jwe as Parameters<typeof decryptResource>[0];
    expect(new TextDecoder().decode(await decryptResource(jwe, key))).toBe('the model key');
    const other = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, false, [
      'deriveBits',
    ]);
    await expect(decryptResource(jwe, other.privateKey)).rejects.toThrow();
  });
});
