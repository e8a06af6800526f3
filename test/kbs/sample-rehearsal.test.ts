/**
 * Rehearsing production with the sample TEE (dev mode): a broker that pins the launch measurement —
 * by a release policy or by a reference value — releases to a sample launched with that measurement
 * and refuses another; an init-data policy releases to a sample whose "host" put the init-data's
 * digest into host_data, and refuses init-data that is not the one it was launched with.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { sampleAttester, type TestBroker, testBroker } from './helpers.js';

const PINNED = 'ab'.repeat(48);
const OTHER = 'cd'.repeat(48);
const INIT = `version = "0.1.0"
algorithm = "sha256"

[data]
"cdh.toml" = "url = 'https://kbs.example'"
`;
const hostData = (body: string) => createHash('sha256').update(body).digest('hex');

describe('rehearsing measurement pinning and init-data with the sample TEE', () => {
  let b: TestBroker;
  let admin: string;
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
    admin = await b.admin();
    for (const path of ['owner/app/by-policy', 'owner/app/by-refvalue', 'owner/app/by-init-data']) {
      const put = await b.call('PUT', `/admin/v1/resources/${path}`, admin, new TextEncoder().encode(path));
      expect(put.status).toBe(201);
    }
    const policies: [string, string][] = [
      ['resource:owner/app/by-policy', `submods.cpu0.claims.measurement == "${PINNED}"`],
      [
        'resource:owner/app/by-init-data',
        `has(init_data.digest) && init_data.data["cdh.toml"].contains("kbs.example")`,
      ],
    ];
    for (const [scope, source] of policies) {
      expect((await b.call('PUT', '/admin/v1/policies', admin, { scope, source })).status).toBe(200);
    }
  });
  afterAll(() => b.close());

  const get = async (path: string, o: Parameters<typeof sampleAttester>[0], initData?: string) =>
    new TextDecoder().decode(
      await new KbsClient({
        url: b.url,
        attester: await sampleAttester(o),
        ...(initData !== undefined ? { initData: { format: 'toml' as const, body: initData } } : {}),
      }).getResource(path),
    );

  it('a release policy pinning the measurement releases to it and denies another', async () => {
    expect(await get('owner/app/by-policy', { measurement: PINNED })).toBe('owner/app/by-policy');
    await expect(get('owner/app/by-policy', { measurement: OTHER })).rejects.toMatchObject({
      status: 403,
      type: 'denied',
    });
  });

  it('an init-data policy releases to a sample launched with that init-data, and refuses other init-data', async () => {
    const launched = { hostData: hostData(INIT) };
    expect(await get('owner/app/by-init-data', launched, INIT)).toBe('owner/app/by-init-data');
    await expect(get('owner/app/by-init-data', launched)).rejects.toMatchObject({
      status: 403,
      type: 'denied',
    });
    const other = INIT.replace('kbs.example', 'evil.example');
    await expect(get('owner/app/by-init-data', launched, other)).rejects.toMatchObject({
      status: 403,
      type: 'attestation-init-data-mismatch',
    });
  });

  it('a sample/measurement reference value releases to it and denies another', async () => {
    // Reference values judge every release of the broker: this case runs last, so that it judges no other.
    const add = await b.call('POST', '/admin/v1/refvalues', admin, {
      tee: 'sample',
      name: 'measurement',
      values: [PINNED],
    });
    expect(add.status).toBe(201);
    expect(await get('owner/app/by-refvalue', { measurement: PINNED })).toBe('owner/app/by-refvalue');
    await expect(get('owner/app/by-refvalue', { measurement: OTHER })).rejects.toMatchObject({
      status: 403,
      type: 'denied',
    });
  });
});
