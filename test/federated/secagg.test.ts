import { describe, expect, it } from 'vitest';
import { FederatedError } from '../../src/federated/errors.js';
import {
  createSecAggClient,
  dequantiseSum,
  quantise,
  type SecAggClient,
  type SecAggConfig,
  shamirCombine,
  shamirSplit,
  type UnmaskResponse,
  unmaskSum,
} from '../../src/federated/secagg.js';

const N = 64;

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof FederatedError ? e.code : `not FederatedError: ${String(e)}`;
  }
  return undefined;
}

async function codeOfAsync(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    return e instanceof FederatedError ? e.code : `not FederatedError: ${String(e)}`;
  }
  return undefined;
}

function randomInput(): Uint32Array {
  return crypto.getRandomValues(new Uint32Array(N));
}

function sumOf(xs: readonly Uint32Array[]): Uint32Array {
  const s = new Uint32Array(N);
  for (const x of xs) for (let i = 0; i < N; i++) s[i] = (s[i] as number) + (x[i] as number);
  return s;
}

/** Runs rounds 1–3 for every client: keys, shares routed, masked inputs. */
async function setUp(config: SecAggConfig) {
  const clients = await Promise.all(config.clientIds.map((id) => createSecAggClient(config, id)));
  const publicKeys = new Map(clients.map((c) => [c.id, c.publicKey]));
  const shares = (await Promise.all(clients.map((c) => c.shareKeys(publicKeys)))).flat();
  for (const c of clients) c.receiveShares(shares.filter((s) => s.to === c.id));
  const inputs = new Map(clients.map((c) => [c.id, randomInput()]));
  const masked = new Map<number, Uint32Array>();
  for (const c of clients) masked.set(c.id, await c.maskInput(inputs.get(c.id) as Uint32Array));
  return { clients, publicKeys, inputs, masked };
}

/** The coordinator's round 4 after `dropped` vanished once their masked vectors were sent (or not). */
async function finish(
  config: SecAggConfig,
  run: Awaited<ReturnType<typeof setUp>>,
  dropped: readonly number[],
) {
  const survivors = config.clientIds.filter((id) => !dropped.includes(id));
  const masked = new Map([...run.masked].filter(([id]) => survivors.includes(id)));
  const responses: UnmaskResponse[] = run.clients
    .filter((c: SecAggClient) => survivors.includes(c.id))
    .map((c) => c.revealShares({ survivors, dropped }));
  const sum = await unmaskSum(config, run.publicKeys, masked, responses);
  const expected = sumOf(survivors.map((id) => run.inputs.get(id) as Uint32Array));
  return { sum, expected, survivors, responses, masked };
}

const five: SecAggConfig = { roundId: 'round-1', clientIds: [1, 2, 3, 4, 5], threshold: 3, vectorLength: N };

describe('secure aggregation (double masking)', () => {
  it('5 clients, t = 3, no dropout: the exact sum mod 2^32', async () => {
    const run = await setUp(five);
    const { sum, expected } = await finish(five, run, []);
    expect(sum).toEqual(expected);
  });

  it('1 and 2 dropouts after masking: the exact sum of the survivors', async () => {
    for (const dropped of [[2], [1, 5], [3, 4]]) {
      const run = await setUp(five);
      const { sum, expected } = await finish(five, run, dropped);
      expect(sum).toEqual(expected);
    }
  });

  it('SecAgg+ over a ring of neighbours (each client pairs with 2 others), with a dropout', async () => {
    const ids = [1, 2, 3, 4, 5, 6];
    const neighbours = new Map(
      ids.map((id, i) => [id, [ids[(i + 1) % 6] as number, ids[(i + 5) % 6] as number]]),
    );
    const config: SecAggConfig = {
      roundId: 'ring',
      clientIds: ids,
      threshold: 2,
      vectorLength: N,
      neighbours,
    };
    const run = await setUp(config);
    const { sum, expected } = await finish(config, run, [4]);
    expect(sum).toEqual(expected);
  });

  it('a masked vector alone reveals nothing obvious about its input', async () => {
    // A small, structured input (all zeros) makes any leak visible.
    const config: SecAggConfig = { ...five, vectorLength: 4096 };
    const clients = await Promise.all(config.clientIds.map((id) => createSecAggClient(config, id)));
    const publicKeys = new Map(clients.map((c) => [c.id, c.publicKey]));
    const shares = (await Promise.all(clients.map((c) => c.shareKeys(publicKeys)))).flat();
    for (const c of clients) c.receiveShares(shares.filter((s) => s.to === c.id));
    const y = await (clients[0] as SecAggClient).maskInput(new Uint32Array(4096));
    const zeros = y.filter((v) => v === 0).length;
    expect(zeros).toBeLessThan(5);
    // Uniform over 2^32: the mean of the top byte is near 127.5 (σ of the mean ≈ 1.2 for 4096 draws).
    const meanTop = y.reduce((a, v) => a + (v >>> 24), 0) / y.length;
    expect(Math.abs(meanTop - 127.5)).toBeLessThan(10);
  });

  it('refuses to unmask below the threshold of survivors', async () => {
    const run = await setUp(five);
    // Only 2 survivors: the clients refuse to answer…
    const c1 = run.clients[0] as SecAggClient;
    expect(codeOf(() => c1.revealShares({ survivors: [1, 2], dropped: [3, 4, 5] }))).toBe(
      'secagg-below-threshold',
    );
    // …and the coordinator refuses to unmask with too few shares of a secret.
    const survivors = [1, 2, 3];
    const responses = run.clients.slice(0, 2).map((c) => c.revealShares({ survivors, dropped: [4, 5] }));
    const masked = new Map([...run.masked].filter(([id]) => survivors.includes(id)));
    expect(await codeOfAsync(unmaskSum(five, run.publicKeys, masked, responses))).toBe(
      'secagg-below-threshold',
    );
    expect(
      await codeOfAsync(unmaskSum(five, run.publicKeys, new Map([...masked].slice(0, 2)), responses)),
    ).toBe('secagg-below-threshold');
  });

  it('never reveals both the self-mask share and the mask-key share of the same client', async () => {
    const run = await setUp(five);
    const c1 = run.clients[0] as SecAggClient;
    // In one request: client 3 claimed both alive and dropped.
    expect(codeOf(() => c1.revealShares({ survivors: [1, 2, 3, 4], dropped: [3, 5] }))).toBe(
      'secagg-both-shares',
    );
    // Across requests: 5 was reported dropped (key share out), later claimed alive to get b_5 too.
    c1.revealShares({ survivors: [1, 2, 3, 4], dropped: [5] });
    expect(codeOf(() => c1.revealShares({ survivors: [1, 2, 3, 4, 5], dropped: [] }))).toBe(
      'secagg-both-shares',
    );
  });

  it('detects mask-key shares that do not rebuild the published key', async () => {
    const run = await setUp(five);
    const { survivors } = { survivors: [1, 2, 3, 4] };
    const responses = run.clients.slice(0, 4).map((c) => c.revealShares({ survivors, dropped: [5] }));
    const forged = responses.map((r) => ({
      ...r,
      maskKeyShares: new Map([...r.maskKeyShares].map(([k, v]) => [k, v.map((b) => b ^ 1)])),
    }));
    const masked = new Map([...run.masked].filter(([id]) => id !== 5));
    expect(await codeOfAsync(unmaskSum(five, run.publicKeys, masked, forged))).toBe('secagg-bad-share');
  });

  it('refuses inconsistent lengths, bad ids and bad configs', async () => {
    const run = await setUp(five);
    const c1 = run.clients[0] as SecAggClient;
    expect(await codeOfAsync(c1.maskInput(new Uint32Array(N + 1)))).toBe('secagg-length');
    const masked = new Map(run.masked);
    masked.set(2, new Uint32Array(N - 1));
    expect(await codeOfAsync(unmaskSum(five, run.publicKeys, masked, []))).toBe('secagg-length');
    expect(await codeOfAsync(createSecAggClient(five, 9))).toBe('secagg-id');
    expect(await codeOfAsync(createSecAggClient({ ...five, clientIds: [1, 2, 256] }, 1))).toBe('secagg-id');
    expect(await codeOfAsync(createSecAggClient({ ...five, threshold: 1 }, 1))).toBe('secagg-config');
    expect(await codeOfAsync(createSecAggClient({ ...five, threshold: 6 }, 1))).toBe('secagg-config');
    expect(await codeOfAsync(createSecAggClient({ ...five, clientIds: [1, 1, 2] }, 1))).toBe('secagg-config');
    const oneWay = new Map([
      [1, [2]],
      [2, [] as number[]],
    ]);
    expect(
      await codeOfAsync(
        createSecAggClient({ ...five, clientIds: [1, 2], threshold: 2, neighbours: oneWay }, 1),
      ),
    ).toBe('secagg-config');
    const fresh = await createSecAggClient(five, 1);
    expect(await codeOfAsync(fresh.maskInput(new Uint32Array(N)))).toBe('secagg-missing-share');
    await fresh.shareKeys(run.publicKeys);
    expect(await codeOfAsync(fresh.maskInput(new Uint32Array(N)))).toBe('secagg-missing-share');
    expect(await codeOfAsync(fresh.shareKeys(new Map([[2, new Uint8Array(31)]])))).toBe('secagg-key');
    const s = (await fresh.shareKeys(run.publicKeys))[0];
    expect(s && codeOf(() => c1.receiveShares([{ ...s, to: 1, selfMaskShare: new Uint8Array(5) }]))).toBe(
      'secagg-length',
    );
  });
});

describe('Shamir over GF(256)', () => {
  it('any t shares rebuild the secret; t − 1 give something else', () => {
    const secret = crypto.getRandomValues(new Uint8Array(32));
    const shares = shamirSplit(secret, [1, 2, 3, 4, 5], 3);
    expect(shamirCombine(new Map([...shares].filter(([x]) => [1, 3, 5].includes(x))))).toEqual(secret);
    expect(shamirCombine(new Map([...shares].filter(([x]) => [2, 4, 5, 1].includes(x))))).toEqual(secret);
    expect(shamirCombine(new Map([...shares].filter(([x]) => [2, 4].includes(x))))).not.toEqual(secret);
  });
});

describe('quantisation', () => {
  const q = { clip: 1, scale: 2 ** 20 };
  it('round-trips a sum of clipped floats within 1/scale per client', async () => {
    const a = [0.5, -0.25, 3, -7, 1e-7];
    const b = [-0.125, -0.5, 0.75, 0.5, -0.3];
    const sum = new Uint32Array(5);
    for (const v of [quantise(a, q), quantise(b, q)])
      for (let i = 0; i < 5; i++) sum[i] = (sum[i] as number) + (v[i] as number);
    const back = dequantiseSum(sum, q, 2);
    const want = [0.375, -0.75, 1.75, -0.5, -0.3];
    for (let i = 0; i < 5; i++)
      expect(Math.abs((back[i] as number) - (want[i] as number))).toBeLessThanOrEqual(2 / q.scale);
  });

  it('survives secure aggregation end to end', async () => {
    const config: SecAggConfig = { roundId: 'q', clientIds: [1, 2, 3], threshold: 2, vectorLength: 3 };
    const floats = new Map([
      [1, [0.1, -0.2, 0.3]],
      [2, [-0.4, 0.5, 0.6]],
      [3, [0.7, -0.8, -0.9]],
    ]);
    const clients = await Promise.all(config.clientIds.map((id) => createSecAggClient(config, id)));
    const publicKeys = new Map(clients.map((c) => [c.id, c.publicKey]));
    const shares = (await Promise.all(clients.map((c) => c.shareKeys(publicKeys)))).flat();
    for (const c of clients) c.receiveShares(shares.filter((s) => s.to === c.id));
    const masked = new Map<number, Uint32Array>();
    for (const c of clients) masked.set(c.id, await c.maskInput(quantise(floats.get(c.id) as number[], q)));
    const responses = clients.map((c) => c.revealShares({ survivors: [1, 2, 3], dropped: [] }));
    const back = dequantiseSum(await unmaskSum(config, publicKeys, masked, responses), q, 3);
    for (const [i, w] of [0.4, -0.5, 0].entries()) expect(back[i]).toBeCloseTo(w, 5);
  });

  it('refuses ranges that could wrap, and NaN', () => {
    expect(codeOf(() => quantise([1], { clip: 0, scale: 1 }))).toBe('secagg-range');
    expect(codeOf(() => quantise([1], { clip: 1, scale: 2 ** 31 }))).toBe('secagg-range');
    expect(codeOf(() => quantise([Number.NaN], q))).toBe('secagg-range');
    expect(codeOf(() => dequantiseSum(new Uint32Array(1), q, 2 ** 11))).toBe('secagg-range');
    expect(codeOf(() => dequantiseSum(new Uint32Array(1), q, 0))).toBe('secagg-range');
  });
});
