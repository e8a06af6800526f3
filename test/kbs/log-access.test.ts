/** Who may read the KBS transparency log through the admin API, and which ranges are refused. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestBroker, testBroker } from './helpers.js';

describe('admin log reads', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await testBroker({ devMode: true });
  });
  afterAll(() => b.close());

  it('keeps the log from tenant-bound auditors and answers bad ranges with 400', async () => {
    const scoped = await b.admin('auditor', 'acme');
    for (const path of ['/admin/v1/log/entries', '/admin/v1/log/bundle']) {
      expect((await b.call('GET', path, scoped)).status).toBe(403);
    }
    const auditor = await b.admin('global-auditor');
    for (const q of ['from=1.5', 'from=abc', 'to=-1', 'from=5&to=2', 'to=99999']) {
      for (const path of ['/admin/v1/log/entries', '/admin/v1/log/bundle']) {
        const r = await b.call('GET', `${path}?${q}`, auditor);
        expect([path, q, r.status]).toEqual([path, q, 400]);
      }
    }
  });
});
