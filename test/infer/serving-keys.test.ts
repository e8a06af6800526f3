/**
 * Serving keys shared by replicas: the document round-trips, bad documents are refused with the
 * reason, keys made for other models do not start a server, the identity names where the keys came
 * from and clients accept only sources they name; two servers holding one set look the same to such a
 * client, so a load balancer may send its requests to either; servers with their own keys cannot stand
 * in for each other.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { confidentialFetch } from '../../src/client/fetch.js';
import {
  decodeServingKeys,
  encodeServingKeys,
  generateServingKeys,
  SERVING_KEYS_TYPE,
  type SharedServingKeys,
} from '../../src/infer/serving-keys.js';
import { decapsulateRequest, encapsulateRequest, ReplayCache } from '../../src/ohttp/index.js';
import { utf8 } from '../../src/util/bytes.js';
import {
  type Harness,
  harnessServingKeys,
  KEYS_SOURCE,
  NO_COLLATERAL,
  SAMPLE_POLICY,
  SHARED_KEYS_POLICY,
  startHarness,
  TEXT_DIGEST,
} from './harness.js';

const SCOPE = { models: [{ id: 'm', digest: TEXT_DIGEST }], plaintextAllowed: false };

describe('serving keys document', () => {
  it('round-trips: the same OHTTP key opens requests, the same receipt key signs', async () => {
    const keys = await generateServingKeys({ keyId: 7, exportable: true });
    const back = await decodeServingKeys(await encodeServingKeys(keys, SCOPE), KEYS_SOURCE);
    expect(back).toMatchObject({ ...SCOPE, source: KEYS_SOURCE });
    expect(back.gateway.config).toEqual(keys.gateway.config);
    expect(back.receipt.publicJwk).toEqual(keys.receipt.publicJwk);
    const { encapsulated } = await encapsulateRequest(keys.gateway.config, utf8.encode('hello'));
    const { request } = await decapsulateRequest(encapsulated, [back.gateway]);
    expect(utf8.decode(request)).toBe('hello');
    expect(back.receipt.privateKey.extractable).toBe(false);
    const alg = { name: 'ECDSA', hash: 'SHA-256' };
    const message = new TextEncoder().encode('receipt');
    const signature = await crypto.subtle.sign(alg, back.receipt.privateKey, message);
    const pub = await crypto.subtle.importKey(
      'jwk',
      keys.receipt.publicJwk,
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['verify'],
    );
    expect(await crypto.subtle.verify(alg, pub, signature, message)).toBe(true);
  });

  it('refuses a document that is not one, with the reason', async () => {
    const doc = async () =>
      JSON.parse(
        utf8.decode(await encodeServingKeys(await generateServingKeys({ exportable: true }), SCOPE)),
      );
    const [good, other] = [await doc(), await doc()];
    const cases: [unknown, RegExp][] = [
      ['{', /not JSON/],
      [{ ...good, type: 'x' }, new RegExp(`not a ${SERVING_KEYS_TYPE} document`)],
      [{ ...good, ohttp: { ...good.ohttp, key_id: 256 } }, /key_id must be an integer 0–255/],
      [{ ...good, ohttp: { ...good.ohttp, private_key: 'AAAA' } }, /private_key must be 32 bytes/],
      [{ ...good, receipt: { ...good.receipt, crv: 'P-384' } }, /EC P-256/],
      // Node refuses the pair on import; elsewhere the signing probe does.
      [
        { ...good, receipt: { ...good.receipt, d: other.receipt.d } },
        /receipt is not a usable P-256 key|receipt.d is not the private key/,
      ],
      [{ ...good, receipt: undefined }, /"receipt" must be/],
      [{ ...good, models: [] }, /"models" must list/],
      [{ ...good, models: [{ id: 'm', digest: 'md5:00' }] }, /models\[0\] must be/],
      [{ ...good, plaintext_allowed: 'no' }, /"plaintext_allowed" must be true or false/],
    ];
    for (const [doc, message] of cases) {
      const bytes = utf8.encode(typeof doc === 'string' ? doc : JSON.stringify(doc));
      await expect(decodeServingKeys(bytes, KEYS_SOURCE), String(message)).rejects.toThrow(message);
    }
    await expect(
      encodeServingKeys(await generateServingKeys({ exportable: true }), { ...SCOPE, models: [] }),
    ).rejects.toThrow(/at least one model/);
  });

  it('keys made for other models or another plaintext setting do not start a server', async () => {
    const other = await decodeServingKeys(
      await encodeServingKeys(await generateServingKeys({ exportable: true }), SCOPE),
      KEYS_SOURCE,
    );
    await expect(startHarness({ keys: other })).rejects.toThrow(
      /are for m sha256:.*; this server loaded tiny-llama/,
    );
    await expect(
      startHarness({ keys: await harnessServingKeys({ plaintextAllowed: true }) }),
    ).rejects.toThrow(/for servers with --allow-plaintext/);
  });

  it('shared keys without a shared replay store do not start a server', async () => {
    // Shared keys outlive the process: a memory of requests per process would let another replica, or
    // this one after a restart, answer a captured request again.
    await expect(startHarness({ keys: await harnessServingKeys() })).rejects.toThrow(
      /shared serving keys need a shared replay store \(--replay-redis\)/,
    );
  });
});

describe('replicas behind one load balancer', () => {
  let shared: SharedServingKeys;
  let a: Harness;
  let b: Harness;
  let lone: Harness;
  beforeAll(async () => {
    shared = await harnessServingKeys();
    // One cache for both, standing in for the Redis replicas share (replay-redis.test.ts uses a real one).
    const replay = new ReplayCache({ windowMs: 120_000, maxEntries: 1000 });
    [a, b, lone] = await Promise.all([
      startHarness({ keys: shared, replay }),
      startHarness({ keys: shared, replay }),
      startHarness(),
    ]);
  });
  afterAll(() => Promise.all([a, b, lone].map((h) => h.server.close())));

  /** A round-robin balancer in front of `replicas`, as the client's transport. */
  function balancer(replicas: Harness[]) {
    let next = 0;
    const hits = replicas.map(() => 0);
    const transport = (input: RequestInfo | URL, init?: RequestInit) => {
      const i = next++ % replicas.length;
      hits[i]!++;
      const u = new URL(String(input));
      return fetch(new URL(u.pathname + u.search, replicas[i]!.server.url), init);
    };
    return { transport, hits };
  }

  async function chat(f: typeof fetch, url: string) {
    const r = await f(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', messages: [{ role: 'user', content: 'hi' }] }),
    });
    return { status: r.status, body: await r.json() };
  }

  it('the identity names where the keys came from; a client whose policy does not name it refuses', async () => {
    expect(a.server.attestation.identity.sharedKeys).toBe(KEYS_SOURCE);
    expect(lone.server.attestation.identity.sharedKeys).toBeUndefined();
    const f = confidentialFetch({ url: a.server.url, policy: SAMPLE_POLICY, collateral: NO_COLLATERAL });
    await expect(f.server()).rejects.toMatchObject({
      code: 'shared-keys',
      message: expect.stringContaining(`come from ${KEYS_SOURCE}`),
    });
  });

  it('replicas with the shared keys attest the same identity and serve each other’s clients', async () => {
    expect(a.server.attestation.identity).toEqual(b.server.attestation.identity);
    const lb = balancer([a, b]);
    const receipts: unknown[] = [];
    const f = confidentialFetch({
      url: a.server.url,
      policy: SHARED_KEYS_POLICY,
      collateral: NO_COLLATERAL,
      fetch: lb.transport as typeof fetch,
      onReceipt: (r) => receipts.push(r),
    });
    for (let i = 0; i < 4; i++) {
      const r = await chat(f, a.server.url);
      expect(r.status).toBe(200);
      expect(r.body.choices[0].message.content).toBeTruthy();
    }
    expect(lb.hits.every((n) => n >= 2)).toBe(true);
    expect(receipts).toHaveLength(4);
  });

  it('a replica with keys of its own cannot answer for another', async () => {
    const lb = balancer([a, lone]);
    const f = confidentialFetch({
      url: a.server.url,
      policy: SHARED_KEYS_POLICY,
      collateral: NO_COLLATERAL,
      fetch: lb.transport as typeof fetch,
    });
    // Attestation from a, the request to lone: refused there, re-verified (at a), retried (at lone).
    const r = await f(`${a.server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
  });
});
