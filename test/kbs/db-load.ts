/**
 * Load for the database-loss tests (db-loss.test.ts, db-restart.slow.test.ts): releases over the KBS
 * protocol and admin writes (new resources, rotations, policies) running together, every HTTP answer
 * recorded; then the checks that follow any outage: each answer was a success or a 503 with
 * Retry-After, every acknowledged write is in the store with its log entry, and the log verifies.
 */
import { expect } from 'vitest';
import { KbsClient, KbsClientError } from '../../src/tee/kbs-client.js';
import { verifyBundle } from '../../src/translog/index.js';
import { sampleAttester, type TestBroker } from './helpers.js';

const VALUE = new TextEncoder().encode('a key that must survive');
/** Resource the release workers fetch, resource the rotations bump, policy scope the policy writes set. */
export const RELEASED = 'owner/models/released';
const ROTATED = 'owner/models/rotated';
const POLICY_SCOPE = 'resource:owner/models/policed';

export interface LoadResult {
  /** `METHOD path status` of every answer that was not a success or a 503 with Retry-After. */
  unexpected: string[];
  /** Count of 503 answers. */
  unavailable: number;
  releases: number;
  /** Paths whose PUT was acknowledged (201). */
  puts: string[];
  /** Versions acknowledged by rotations (200) and by policy writes (200). */
  rotations: number[];
  policies: number[];
}

/** Creates what the load uses. */
export async function prepareLoad(b: TestBroker): Promise<void> {
  const admin = await b.admin();
  for (const path of [RELEASED, ROTATED]) {
    expect((await b.call('PUT', `/admin/v1/resources/${path}`, admin, VALUE)).status).toBe(201);
  }
}

/**
 * Runs `workers` release loops and one loop each of resource puts, rotations and policy writes until
 * `running()` turns false (checked between requests), each loop at least `minRounds` times. `allow`
 * accepts an answer beyond success and 503 (e.g. a 401 after a crash emptied the sessions table).
 */
export async function runLoad(
  b: TestBroker,
  o: {
    running: () => boolean;
    workers: number;
    minRounds: number;
    allow?: (status: number, type: string) => boolean;
  },
): Promise<LoadResult> {
  const result: LoadResult = {
    unexpected: [],
    unavailable: 0,
    releases: 0,
    puts: [],
    rotations: [],
    policies: [],
  };
  const admin = await b.admin();
  // A network error (the broker gone) rejects here and fails the test.
  const recording: typeof fetch = async (input, init) => {
    const r = await fetch(input, init);
    if (r.ok) return r;
    const what = `${init?.method ?? 'GET'} ${new URL(input instanceof Request ? input.url : String(input)).pathname}`;
    const type = String(((await r.clone().json()) as { type?: string }).type ?? '')
      .split('/')
      .pop()!;
    if (r.status === 503 && r.headers.get('retry-after')) result.unavailable++;
    else if (!o.allow?.(r.status, type)) result.unexpected.push(`${what} ${r.status} ${type}`);
    return r;
  };
  const call = async (method: string, path: string, body: Uint8Array | object) => {
    const binary = body instanceof Uint8Array;
    const r = await recording(new URL(path, b.url), {
      method,
      headers: {
        authorization: `Bearer ${admin}`,
        'content-type': binary ? 'application/octet-stream' : 'application/json',
      },
      body: binary ? new Uint8Array(body) : JSON.stringify(body),
    });
    return r.ok ? ((await r.json()) as { version: number }) : undefined;
  };
  const loop = async (step: (i: number) => Promise<void>) => {
    for (let i = 0; i < o.minRounds || o.running(); i++) await step(i);
  };
  const attester = await sampleAttester();
  await Promise.all([
    ...Array.from({ length: o.workers }, () =>
      loop(async () => {
        // One attempt per request: a 503 ends this release, and the next one starts afresh.
        const client = new KbsClient({ url: b.url, attester, fetch: recording, retries: 1 });
        try {
          await client.getResource(RELEASED);
          result.releases++;
        } catch (e) {
          if (!(e instanceof KbsClientError) || e.status === undefined) throw e;
        }
      }),
    ),
    loop(async (i) => {
      const path = `owner/put/k${i}`;
      if (await call('PUT', `/admin/v1/resources/${path}`, VALUE)) result.puts.push(path);
    }),
    loop(async () => {
      const meta = await call('POST', `/admin/v1/resources/${ROTATED}`, VALUE);
      if (meta) result.rotations.push(meta.version);
    }),
    loop(async (i) => {
      const policy = await call('PUT', '/admin/v1/policies', {
        scope: POLICY_SCOPE,
        source: `cpu.claims.measurement != "${i}"`,
      });
      if (policy) result.policies.push(policy.version);
    }),
  ]);
  return result;
}

interface Entry {
  kind: string;
  subject: string;
}

/** What must hold once the database is back, whatever happened during the load. */
export async function checkAfterLoad(b: TestBroker, r: LoadResult): Promise<void> {
  expect(r.unexpected).toEqual([]);
  const admin = await b.admin();
  const get = async <T>(path: string): Promise<T> => {
    const res = await b.call('GET', path, admin);
    expect(res.status).toBe(200);
    return (await res.json()) as T;
  };
  const { entries } = await get<{ entries: Entry[] }>('/admin/v1/log/entries');
  const logged = (kind: string, subject?: string) =>
    entries.filter((e) => e.kind === kind && (subject === undefined || e.subject === subject)).length;

  // Releases: each acknowledged one has its entry (one whose answer was lost may have one too).
  expect(logged('release', RELEASED)).toBeGreaterThanOrEqual(r.releases);

  // New resources: each acknowledged one exists, with exactly one put entry.
  const { resources } = await get<{ resources: { path: string; version: number }[] }>('/admin/v1/resources');
  const paths = new Set(resources.map((x) => x.path));
  for (const path of r.puts) {
    expect(paths.has(path)).toBe(true);
    expect(logged('resource-put', path)).toBe(1);
  }

  // Rotations: no version acknowledged twice, and every applied rotation has exactly one entry (so
  // none was applied twice, nor without its entry).
  const rotated = resources.find((x) => x.path === ROTATED)!;
  expect(new Set(r.rotations).size).toBe(r.rotations.length);
  expect(Math.max(1, ...r.rotations)).toBeLessThanOrEqual(rotated.version);
  expect(logged('resource-rotate', ROTATED)).toBe(rotated.version - 1);

  // Policies: each acknowledged version is stored, once, and each stored version has one entry.
  const { policies } = await get<{ policies: { scope: { path?: string }; version: number }[] }>(
    '/admin/v1/policies',
  );
  const versions = policies.filter((p) => p.scope.path === 'owner/models/policed').map((p) => p.version);
  expect(new Set(r.policies).size).toBe(r.policies.length);
  for (const v of r.policies) expect(versions).toContain(v);
  expect(logged('policy-set')).toBe(versions.length);

  // The log is one unbroken chain that verifies against the broker's checkpoint key.
  const bundle = await b.call('GET', '/admin/v1/log/bundle?proofs=all', await b.admin('global-auditor'));
  expect(bundle.status).toBe(200);
  const report = await verifyBundle(await bundle.text(), b.logVerifierKey);
  expect(report.errors).toEqual([]);
  expect(report.ok).toBe(true);
  expect(report.entries).toEqual({ from: 0, to: entries.length });
}
