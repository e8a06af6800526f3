/**
 * Interoperability with Confidential Containers, both ways, with the exact messages of their sources:
 *
 *  - an unmodified CoCo guest (guest-components' kbs_protocol rcar_client + sample attester) against
 *    `cloister kbs serve`: Request with its extra-params, SHA-384 runtime-data digest, `{svn,
 *    report_data}` evidence, the TEE key as kbs_types' TeePubKey serialises it (P-256, P-521, RSA);
 *  - Cloister's TEE-side client (src/tee/kbs-client.ts + src/tee/keys.ts) against a fake KBS written from
 *    Trustee's kbs/src (attestation/backend.rs, error.rs, jwe/mod.rs, token/mod.rs), its sample verifier
 *    (deps/verifier/src/sample) and its EAR broker (attestation-service/src/ear_token/broker.rs).
 */
import {
  createCipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  randomBytes,
  randomUUID,
} from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { decodeJwt, exportJWK, flattenedDecrypt, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TRUSTEE_EAR_PROFILE, verifyEar } from '../../src/attest/ear/index.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import { KbsClient, KbsClientError } from '../../src/tee/kbs-client.js';
import { kbsAttester } from '../../src/tee/keys.js';
import { fromBase64, toBase64Url } from '../../src/util/bytes.js';
import { canonicalizeBytes } from '../../src/util/jcs.js';
import { type TestBroker, testBroker } from './helpers.js';

const SECRET = new TextEncoder().encode('the model key');
const sha384 = (b: Uint8Array) => new Uint8Array(createHash('sha384').update(b).digest());
const stdB64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

/** guest-components' TeeKeyPair::export_pubkey as serde writes kbs_types::TeePubKey (kty first). */
async function guestKey(kind: 'P-256' | 'P-384' | 'P-521' | 'RSA') {
  if (kind === 'RSA') {
    const kp = (await crypto.subtle.generateKey(
      { name: 'RSA-OAEP', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
      true,
      ['decrypt', 'encrypt'],
    )) as CryptoKeyPair;
    const j = await crypto.subtle.exportKey('jwk', kp.publicKey);
    return { privateKey: kp.privateKey, pub: { kty: 'RSA', alg: 'RSA-OAEP-256', n: j.n!, e: j.e! } };
  }
  const kp = (await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: kind }, true, [
    'deriveBits',
  ])) as CryptoKeyPair;
  const j = await crypto.subtle.exportKey('jwk', kp.publicKey);
  return {
    privateKey: kp.privateKey,
    pub: { kty: 'EC', crv: kind, alg: 'ECDH-ES+A256KW', x: j.x!, y: j.y! },
  };
}

describe('an unmodified CoCo guest against cloister kbs serve', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    expect((await b.call('PUT', '/admin/v1/resources/default/key/1', await b.admin(), SECRET)).status).toBe(
      201,
    );
  });
  afterAll(() => b.close());

  /** rcar_handshake + get_resource, byte for byte as guest-components sends them. */
  async function cocoGuest(keyKind: 'P-256' | 'P-384' | 'P-521' | 'RSA') {
    const auth = await fetch(new URL('/kbs/v0/auth', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        version: '0.4.0',
        tee: 'sample',
        'extra-params': { 'supported-hash-algorithms': ['sha256', 'sha384', 'sha512', 'sm3'] },
      }),
    });
    expect(auth.status).toBe(200);
    const challenge = (await auth.json()) as { nonce: string; 'extra-params': unknown };
    // Trustee's generic challenge: no selected-hash-algorithm, so the guest uses SHA-384.
    expect(challenge['extra-params']).toBe('');
    expect(fromBase64(challenge.nonce)).toHaveLength(32);
    const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
    const key = await guestKey(keyKind);
    const runtimeData = { nonce: challenge.nonce, 'tee-pubkey': key.pub };
    const digest = sha384(
      canonicalizeBytes({ 'tee-pubkey': key.pub, nonce: challenge.nonce, 'additional-evidence': '' }),
    );
    const attestation = {
      'init-data': null,
      'runtime-data': runtimeData,
      'tee-evidence': {
        primary_evidence: { svn: '1', report_data: stdB64(digest) },
        additional_evidence: '',
      },
    };
    const attest = (body: object = attestation) =>
      fetch(new URL('/kbs/v0/attest', b.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json', cookie },
        body: JSON.stringify(body),
      });
    const first = await attest();
    expect(first.status, await first.clone().text()).toBe(200);
    const { token } = (await first.json()) as { token: string };
    const resource = await fetch(new URL('/kbs/v0/resource/default/key/1', b.url), { headers: { cookie } });
    return { challenge, token, resource, key, attest };
  }

  for (const kind of ['P-256', 'P-384', 'P-521', 'RSA'] as const) {
    it(`attests with {svn, report_data} and a ${kind} TEE key, and opens the JWE`, async () => {
      const { resource, key } = await cocoGuest(kind);
      expect(resource.status).toBe(200);
      const jwe = await resource.json();
      const { plaintext } = await flattenedDecrypt(jwe, key.privateKey);
      expect(new TextDecoder().decode(plaintext)).toBe('the model key');
    });
  }

  it('issues a token that calls the CoCo sample insecure and carries the challenge as eat_nonce', async () => {
    const { token, challenge } = await cocoGuest('P-256');
    const claims = decodeJwt(token) as Record<string, unknown> & {
      submods: { cpu0: Record<string, unknown> };
    };
    expect(claims.eat_nonce).toBe(challenge.nonce);
    expect(claims.submods.cpu0['ear.status']).toBe('warning');
    expect(claims.submods.cpu0['cloister.insecure']).toBe(true);
    expect(claims.submods.cpu0['ear.veraison.annotated-evidence']).toMatchObject({
      format: 'coco',
      svn: '1',
    });
  });

  it('answers a second attestation of the same session with the stored token, as Trustee does', async () => {
    const { token, attest } = await cocoGuest('P-256');
    const again = await attest();
    expect(again.status).toBe(200);
    expect((await again.json()).token).toBe(token);
  });

  it('gives the stored token back only to the same nonce and TEE key (a cookie holder with another key gets none)', async () => {
    const { challenge, attest } = await cocoGuest('P-256');
    const other = await guestKey('P-256');
    const evidence = {
      primary_evidence: { svn: '1', report_data: stdB64(new Uint8Array(48)) },
      additional_evidence: '',
    };
    for (const runtime of [
      { nonce: challenge.nonce, 'tee-pubkey': other.pub },
      { nonce: 'another-nonce', 'tee-pubkey': other.pub },
    ]) {
      const r = await attest({ 'runtime-data': runtime, 'tee-evidence': evidence });
      expect(r.status).toBe(401);
      expect((await r.json()).type).toMatch(/nonce-used$/);
    }
  });

  it('refuses CoCo sample evidence for another challenge', async () => {
    const auth = await fetch(new URL('/kbs/v0/auth', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: '0.4.0', tee: 'sample', 'extra-params': '' }),
    });
    const cookie = auth.headers.get('set-cookie')!.split(';')[0]!;
    const { nonce } = await auth.json();
    const key = await guestKey('P-256');
    const r = await fetch(new URL('/kbs/v0/attest', b.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', cookie },
      body: JSON.stringify({
        'runtime-data': { nonce, 'tee-pubkey': key.pub },
        'tee-evidence': {
          primary_evidence: { svn: '1', report_data: stdB64(new Uint8Array(48).fill(1)) },
          additional_evidence: '',
        },
      }),
    });
    expect(r.status).toBe(401);
    expect((await r.json()).type).toMatch(/attestation-report-data-mismatch$/);
  });

  it('takes every kbs_types TEE name, refusing the ones it cannot verify in words; only 0.4.0', async () => {
    const auth = (body: object) =>
      fetch(new URL('/kbs/v0/auth', b.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ 'extra-params': '', ...body }),
      });
    for (const tee of ['cca', 'csv', 'se', 'hygondcu', 'tpm']) {
      const r = await auth({ version: '0.4.0', tee });
      expect(r.status).toBe(400);
      const p = await r.json();
      expect(p.type).toMatch(/unsupported-tee$/);
      expect(p.detail).toContain(`no verifier for the "${tee}" TEE`);
    }
    for (const tee of ['nvidia', 'sampledevice', 'nvidia-dpu']) {
      expect((await (await auth({ version: '0.4.0', tee })).json()).detail).toMatch(/is a device/);
    }
    expect((await (await auth({ version: '0.4.0', tee: 'sev' })).json()).detail).toMatch(
      /not a KBS protocol TEE name/,
    );
    for (const version of ['0.4.1', '0.4', '0.4.0-rc1', '0.5.0']) {
      const r = await auth({ version, tee: 'sample' });
      expect(r.status, version).toBe(400);
      expect((await r.json()).type).toMatch(/unsupported-version$/);
    }
    expect((await auth({ version: '0.4.0+build.1', tee: 'sample' })).status).toBe(200);
  });
});

describe('the sample TEE outside dev mode', () => {
  it('is refused at auth with the reason', async () => {
    const b = await testBroker();
    try {
      const r = await fetch(new URL('/kbs/v0/auth', b.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ version: '0.4.0', tee: 'sample', 'extra-params': '' }),
      });
      expect(r.status).toBe(400);
      expect((await r.json()).detail).toMatch(/insecure .* only in dev mode/);
    } finally {
      await b.close();
    }
  });
});

/** A KBS that behaves as Trustee's does (see the file comment), in a few dozen lines. */
async function trusteeFake(resources: Record<string, Uint8Array>) {
  const signer = await generateKeyPair('ES256', { extractable: true });
  const signerJwk = { ...(await exportJWK(signer.publicKey)), alg: 'ES256' };
  const sessions = new Map<string, { nonce: string; token?: string }>();
  const TYPE = 'https://github.com/confidential-containers/kbs/errors';
  const read = async (req: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  };
  const server: Server = createServer(async (req, res) => {
    // error.rs: ErrorInformation {type, detail}; 401 for everything but a bad path or plugin (404).
    const fail = (kind: string, detail: string, status = 401) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ type: `${TYPE}/${kind}`, detail }));
    };
    const cookie = /kbs-session-id=([0-9a-f]+)/.exec(req.headers.cookie ?? '')?.[1];
    try {
      if (req.method === 'POST' && req.url === '/kbs/v0/auth') {
        const r = JSON.parse(await read(req));
        if (r.version !== '0.4.0') return fail('RcarAuthFailed', 'KBS Client Protocol Version Mismatch');
        const id = randomUUID().replaceAll('-', '');
        const nonce = randomBytes(32).toString('base64');
        sessions.set(id, { nonce });
        res.writeHead(200, {
          'content-type': 'application/json',
          'set-cookie': `kbs-session-id=${id}; Expires=${new Date(Date.now() + 300_000).toUTCString()}`,
        });
        return res.end(JSON.stringify({ nonce, 'extra-params': '' }));
      }
      if (req.method === 'POST' && req.url === '/kbs/v0/attest') {
        const s = cookie ? sessions.get(cookie) : undefined;
        if (!s) return fail('RcarAttestFailed', 'session not found');
        const a = JSON.parse(await read(req));
        if (s.token) return res.end(JSON.stringify({ token: s.token }));
        if (a['runtime-data'].nonce !== s.nonce) return fail('RcarAttestFailed', 'nonce differs');
        const rd = {
          'tee-pubkey': a['runtime-data']['tee-pubkey'],
          nonce: s.nonce,
          'additional-evidence': a['tee-evidence'].additional_evidence,
        };
        // deps/verifier/src/sample: {svn: String, report_data: String}, STANDARD base64, exact match.
        const ev = a['tee-evidence'].primary_evidence;
        const expected = sha384(canonicalizeBytes(rd));
        if (typeof ev?.svn !== 'string') return fail('RcarAttestFailed', 'Deserialize Quote failed.');
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(ev.report_data ?? '') || ev.report_data !== stdB64(expected))
          return fail('RcarAttestFailed', 'REPORT_DATA is different from that in Sample Quote');
        const now = Math.floor(Date.now() / 1000);
        s.token = await new SignJWT({
          eat_profile: TRUSTEE_EAR_PROFILE,
          iat: now,
          exp: now + 300,
          iss: 'CoCo-Attestation-Service',
          'ear.verifier-id': {
            developer: 'https://confidentialcontainers.org',
            build: 'attestation-service 0.1.0',
          },
          submods: {
            cpu0: {
              'ear.status': 'affirming',
              'ear.trustworthiness-vector': { configuration: 2, executables: 3, hardware: 2 },
              'ear.appraisal-policy-id': 'default',
              'ear.veraison.annotated-evidence': {
                report_data: ev.report_data,
                runtime_data_claims: rd,
                sample: {
                  svn: ev.svn,
                  launch_digest: 'abcde',
                  platform_version: { major: 1, minor: 4 },
                  debug: false,
                },
              },
            },
          },
        })
          // Trustee's EAR broker embeds its key in the header; a relying party must not trust it.
          .setProtectedHeader({ alg: 'ES256', typ: 'JWT', jwk: signerJwk })
          .sign(signer.privateKey);
        return res.end(JSON.stringify({ token: s.token }));
      }
      const m = /^\/kbs\/v0\/resource\/(.+)$/.exec(req.url ?? '');
      if (req.method === 'GET' && m) {
        const token = (cookie ? sessions.get(cookie)?.token : undefined) ?? undefined;
        if (!token) return fail('TokenNotFound', 'Attestation Token not found');
        const value = resources[m[1]!];
        // resource/kv_storage.rs: an unknown resource is a plugin error, hence 401 (not 404).
        if (!value) return fail('PluginInternalError', 'Plugin internal error');
        const claims = decodeJwt(token) as { submods: { cpu0: Record<string, Record<string, unknown>> } };
        const key = (
          claims.submods.cpu0['ear.veraison.annotated-evidence']!.runtime_data_claims as {
            'tee-pubkey': { kty: string; crv: string; x: string; y: string };
          }
        )['tee-pubkey'];
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify(trusteeJwe(key, value)));
      }
      return fail('PluginNotFound', 'Plugin not found', 404);
    } catch (e) {
      return fail('SerdeError', (e as Error).message);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    earKey: signer.publicKey,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Trustee's jwe.rs ecdh_es_a256kw_p256: Concat KDF over Z, AES key wrap, AES-256-GCM, serde field order. */
function trusteeJwe(key: { kty: string; crv: string; x: string; y: string }, payload: Uint8Array) {
  const eph = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const z = diffieHellman({
    privateKey: eph.privateKey,
    publicKey: createPublicKey({ key: { kty: 'EC', crv: key.crv, x: key.x, y: key.y }, format: 'jwk' }),
  });
  const alg = 'ECDH-ES+A256KW';
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const kek = createHash('sha256')
    .update(Buffer.concat([u32(1), z, u32(alg.length), Buffer.from(alg), u32(0), u32(0), u32(256)]))
    .digest();
  const cek = randomBytes(32);
  const wrap = createCipheriv('id-aes256-wrap', kek, Buffer.from('A6A6A6A6A6A6A6A6', 'hex'));
  const encryptedKey = Buffer.concat([wrap.update(cek), wrap.final()]);
  const epk = eph.publicKey.export({ format: 'jwk' });
  const protectedJson = JSON.stringify({
    alg,
    enc: 'A256GCM',
    epk: { crv: 'P-256', kty: 'EC', x: epk.x, y: epk.y },
  });
  const protectedB64 = toBase64Url(new TextEncoder().encode(protectedJson));
  const iv = randomBytes(12);
  const gcm = createCipheriv('aes-256-gcm', cek, iv);
  gcm.setAAD(Buffer.from(protectedB64));
  const ciphertext = Buffer.concat([gcm.update(payload), gcm.final()]);
  return {
    protected: protectedB64,
    encrypted_key: toBase64Url(encryptedKey),
    iv: toBase64Url(iv),
    ciphertext: toBase64Url(ciphertext),
    tag: toBase64Url(gcm.getAuthTag()),
  };
}

describe("Cloister's TEE-side client against a Trustee KBS", () => {
  let kbs: Awaited<ReturnType<typeof trusteeFake>>;
  beforeAll(async () => {
    kbs = await trusteeFake({ 'default/key/1': SECRET });
  });
  afterAll(() => kbs.close());

  const client = (sampleForm: 'cloister' | 'coco') =>
    new KbsClient({
      url: kbs.url,
      attester: kbsAttester('sample', new InsecureSampleAttester(), undefined, { sampleForm }),
      retries: 1,
    });

  it('gets a resource with CoCo-form sample evidence, and reads the Trustee EAR', async () => {
    const c = client('coco');
    expect(new TextDecoder().decode(await c.getResource('default/key/1'))).toBe('the model key');
    const ear = await verifyEar(await c.token(), kbs.earKey);
    expect(ear.profile).toBe(TRUSTEE_EAR_PROFILE);
    expect(ear.submods.cpu0).toMatchObject({ kind: 'sample', insecure: true, status: 'warning' });
    const mine = (c as unknown as { session: { keyPair: CryptoKeyPair } }).session.keyPair.publicKey;
    expect(ear.teePubkey).toMatchObject({ kty: 'EC', crv: 'P-256', x: (await exportJWK(mine)).x });
  });

  it("is refused by Trustee's sample verifier with Cloister's own sample evidence", async () => {
    const err = await client('cloister')
      .getResource('default/key/1')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KbsClientError);
    expect(err).toMatchObject({ status: 401, type: 'RcarAttestFailed' });
  });

  it('reports an unknown resource as Trustee answers it: 401, after attesting once more', async () => {
    const err = await client('coco')
      .getResource('default/key/none')
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 401, type: 'PluginInternalError' });
  });
});
