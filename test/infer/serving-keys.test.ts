/**
 * Serving keys shared by replicas: the document round-trips, bad documents are refused with the
 * reason, and two servers holding one set look the same to a client, so a load balancer may send a
 * client's requests to either; servers with their own keys cannot stand in for each other.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { confidentialFetch } from '../../src/client/fetch.js';
import {
  decodeServingKeys,
  encodeServingKeys,
  generateServingKeys,
  SERVING_KEYS_TYPE,
  type ServingKeys,
} from '../../src/infer/serving-keys.js';
import { decapsulateRequest, encapsulateRequest } from '../../src/ohttp/index.js';
import { utf8 } from '../../src/util/bytes.js';
import { type Harness, NO_COLLATERAL, SAMPLE_POLICY, startHarness } from './harness.js';

describe('serving keys document', () => {
  it('round-trips: the same OHTTP key opens requests, the same receipt key signs', async () => {
    const keys = await generateServingKeys({ keyId: 7, exportable: true });
    const back = await decodeServingKeys(await encodeServingKeys(keys));
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
    const good = JSON.parse(
      utf8.decode(await encodeServingKeys(await generateServingKeys({ exportable: true }))),
    );
    const other = JSON.parse(
      utf8.decode(await encodeServingKeys(await generateServingKeys({ exportable: true }))),
    );
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
    ];
    for (const [doc, message] of cases) {
      const bytes = utf8.encode(typeof doc === 'string' ? doc : JSON.stringify(doc));
      await expect(decodeServingKeys(bytes), String(message)).rejects.toThrow(message);
    }
  });
});

describe('replicas behind one load balancer', () => {
  let shared: ServingKeys;
  let a: Harness;
  let b: Harness;
  let lone: Harness;
  beforeAll(async () => {
    shared = await decodeServingKeys(
      await encodeServingKeys(await generateServingKeys({ exportable: true })),
    );
    [a, b, lone] = await Promise.all([
      startHarness({ keys: shared }),
      startHarness({ keys: shared }),
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

  it('replicas with the shared keys attest the same identity and serve each other’s clients', async () => {
    expect(a.server.attestation.identity).toEqual(b.server.attestation.identity);
    const lb = balancer([a, b]);
    const receipts: unknown[] = [];
    const f = confidentialFetch({
      url: a.server.url,
      policy: SAMPLE_POLICY,
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
      policy: SAMPLE_POLICY,
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
