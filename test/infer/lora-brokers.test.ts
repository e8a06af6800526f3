/**
 * Two owners, two brokers: the vendor's broker releases the base model's key, the company's broker
 * the adapter's, each after attesting the serving TEE under its own policy (routeResources, as
 * `cloister serve --kbs VENDOR --kbs-route acme=COMPANY` wires it). Each refusing in turn stops the
 * server with the reason, and nothing unsealed is left behind.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as App from '../../src/infer/app.js';
import type * as Tee from '../../src/tee/index.js';
import { sampleAttester, type TestBroker, testBroker } from '../kbs/helpers.js';
import { adapterFor, generateKek, sealBytes, tinyBase, wire } from './lora-fixtures.js';

const dist = (p: string) => import(new URL(`../../dist/${p}`, import.meta.url).href);
const { startInference } = (await dist('infer/app.js')) as typeof App;
const { KbsClient, routeResources } = (await dist('tee/index.js')) as typeof Tee;
const { InsecureSampleAttester } = await dist('tee/evidence/sample.js');

const dir = mkdtempSync(join(tmpdir(), 'cloister-lora-brokers-'));
const parent = mkdtempSync(join(dir, 'shm-'));
const vendorKek = generateKek('kbs:///vendor/models/kek');
const acmeKek = generateKek('kbs:///acme/adapters/kek');
const ZEROS = '00'.repeat(48);
const ACCEPT = `cpu.claims.measurement == "${ZEROS}"`;
const REFUSE = 'cpu.claims.measurement == "00"';

let vendor: TestBroker;
let acme: TestBroker;
let baseFile: string;
let adapter: { file: string; digest: string };

beforeAll(async () => {
  vendor = await testBroker({ devMode: true });
  acme = await testBroker({ devMode: true });
  for (const [b, path, kek] of [
    [vendor, 'vendor/models/kek', vendorKek],
    [acme, 'acme/adapters/kek', acmeKek],
  ] as const) {
    expect((await b.call('PUT', `/admin/v1/resources/${path}`, await b.admin(), kek.secret)).status).toBe(
      201,
    );
  }
  const base = tinyBase();
  baseFile = (await sealBytes(dir, 'base.gguf', base.bytes, vendorKek)).file;
  adapter = await sealBytes(dir, 'adapter.gguf', wire.writeLoraAdapter(adapterFor(base)), acmeKek);
});
afterAll(async () => {
  await vendor?.close();
  await acme?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function policies(v: string, a: string): Promise<void> {
  for (const [b, scope, source] of [
    [vendor, 'resource:vendor/models/kek', v],
    [acme, 'resource:acme/adapters/kek', a],
  ] as const) {
    expect((await b.call('PUT', '/admin/v1/policies', await b.admin(), { scope, source })).status).toBe(200);
  }
}

async function serve() {
  const client = async (url: string) => new KbsClient({ url, attester: await sampleAttester(), retries: 1 });
  const broker = routeResources(await client(vendor.url), new Map([['acme', await client(acme.url)]]));
  return startInference({
    models: [baseFile],
    adapters: [{ file: adapter.file, scale: 1 }],
    tee: { cpu: new InsecureSampleAttester() },
    keys: { broker },
    privateDir: { parent, allowDisk: true },
    engines: { gpu: false, parallel: 1, threads: 1 },
    maxQueued: 1,
    allowPlaintext: false,
    host: '127.0.0.1',
    port: 0,
    log: () => {},
  });
}

describe('base key from the vendor’s broker, adapter key from the company’s', { timeout: 120_000 }, () => {
  it('both release: served, the identity names the adapter, the EAR token is the vendor broker’s', async () => {
    await policies(ACCEPT, ACCEPT);
    const s = await serve();
    try {
      expect(s.attestation.identity.models[0]!.adapters).toEqual([{ digest: adapter.digest, scale: 1 }]);
      expect(s.attestation.ear).toBeTypeOf('string');
    } finally {
      await s.close();
    }
    expect(readdirSync(parent)).toEqual([]);
  });

  it('the vendor refuses the base key: nothing served, nothing left', async () => {
    await policies(REFUSE, ACCEPT);
    await expect(serve()).rejects.toThrow(
      /resource vendor\/models\/kek refused by the key broker \(403 denied\): denied by policy/,
    );
    expect(readdirSync(parent)).toEqual([]);
  });

  it('the company refuses the adapter key: nothing served, nothing left, the broker named', async () => {
    await policies(ACCEPT, REFUSE);
    await expect(serve()).rejects.toThrow(
      /resource acme\/adapters\/kek refused by the key broker \(403 denied\): denied by policy.*\(the broker routed for repository acme\)/,
    );
    expect(readdirSync(parent)).toEqual([]);
  });
});
