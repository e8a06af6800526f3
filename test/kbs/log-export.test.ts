import { afterEach, describe, expect, it } from 'vitest';
import { readBundleLines, verifyBundleLines } from '../../src/translog/index.js';
import { type TestBroker, testBroker, testKeys } from './helpers.js';

/** Appends n release records (group-committed, as concurrent key releases are). */
async function fill(b: TestBroker, n: number): Promise<void> {
  for (let i = 0; i < n; i += 1000) {
    await Promise.all(
      Array.from({ length: Math.min(1000, n - i) }, (_, k) =>
        b.store.appendLog({
          kind: 'release',
          tenant: 'acme',
          actor: `ear:sub=sample:${i + k}`,
          subject: 'kbs:///acme/models/key',
          details: { n: i + k },
        }),
      ),
    );
  }
}

describe('GET /admin/v1/log/bundle', () => {
  let broker: TestBroker | undefined;
  afterEach(async () => {
    await broker?.app.close();
    await broker?.store.close();
    broker = undefined;
  });

  // Before the export was streamed, a few thousand entries with proofs took longer than the request
  // timeout to compute before the first byte, and the connection was cut (an empty file for curl).
  it('streams 4000 entries with every inclusion proof past the request timeout, verifiable as read', async () => {
    const keys = await testKeys();
    const b = await testBroker({ requestTimeoutMs: 1500 }, { keys });
    broker = b;
    await fill(b, 4000);
    const res = await b.call('GET', '/admin/v1/log/bundle?proofs=all', await b.admin('global-auditor'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/jsonl/);
    // A slow reader: the whole transfer lasts longer than the request timeout, each pause less.
    const started = Date.now();
    let reads = 0;
    async function* slowly(): AsyncGenerator<Uint8Array> {
      // Node's web streams are async iterable; the DOM typings do not say so.
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        if (reads++ < 6) await new Promise((r) => setTimeout(r, 300));
        yield chunk;
      }
    }
    const report = await verifyBundleLines(readBundleLines(slowly()), keys.logVkey);
    expect(Date.now() - started).toBeGreaterThan(1500);
    expect(report.errors).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.entries).toEqual({ from: 0, to: 4000 });
    expect(report.inclusionProofs).toBe(4000);
  }, 180_000);

  it('a range the log cannot prove is still refused with 400 before anything is streamed', async () => {
    const b = await testBroker();
    broker = b;
    await fill(b, 10);
    const res = await b.call('GET', '/admin/v1/log/bundle?from=3&to=2', await b.admin());
    expect(res.status).toBe(400);
    expect((await res.json()).type).toMatch(/bad-range/);
  });
});
