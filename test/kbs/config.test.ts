/** The broker configuration file: the trusted-proxy list and the admin-token lifetime bound. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG, loadConfig } from '../../src/kbs/config.js';
import { tempDir } from '../cli/run.js';

const withFile = (config: object) => {
  const file = join(tempDir(), 'kbs.json');
  writeFileSync(file, JSON.stringify(config));
  return file;
};

describe('loadConfig', () => {
  it('trusts no proxy and bounds admin tokens to a day unless configured', async () => {
    const c = await loadConfig(withFile({}));
    expect(c.trustProxy).toEqual([]);
    expect(c.maxAdminTokenLifetimeSeconds).toBe(86_400);
    expect(DEFAULT_CONFIG.trustProxy).toEqual([]);
  });

  it('accepts proxy addresses and CIDRs, IPv4 and IPv6', async () => {
    const trustProxy = ['10.0.0.5', '10.1.0.0/16', '::1', 'fd00::/8'];
    expect((await loadConfig(withFile({ trustProxy }))).trustProxy).toEqual(trustProxy);
  });

  it('refuses anything else as a proxy, and a non-positive token lifetime', async () => {
    for (const trustProxy of [
      ['proxy.example'],
      ['*'],
      ['10.0.0.0/33'],
      ['::/129'],
      ['10.0.0.1/8/1'],
      ['10.0.0.0/x'],
      [''],
      true,
      '10.0.0.1',
    ]) {
      await expect(loadConfig(withFile({ trustProxy })), JSON.stringify(trustProxy)).rejects.toThrow(
        /trustProxy must be a list of proxy IP addresses or CIDRs/,
      );
    }
    for (const v of [0, -1, '3600'])
      await expect(loadConfig(withFile({ maxAdminTokenLifetimeSeconds: v }))).rejects.toThrow(
        /maxAdminTokenLifetimeSeconds must be a positive number/,
      );
  });

  it('takes a rate limit of perSecond ≥ 0 (0: none) and a burst of at least 1', async () => {
    expect((await loadConfig(withFile({ rateLimit: { perSecond: 0 } }))).rateLimit.perSecond).toBe(0);
    expect((await loadConfig(withFile({ rateLimit: { perSecond: 0.5, burst: 1 } }))).rateLimit).toEqual({
      perSecond: 0.5,
      burst: 1,
    });
    for (const rateLimit of [
      { perSecond: -1, burst: 5 },
      { perSecond: 5, burst: 0 },
      { perSecond: 5 },
      {},
      10,
    ]) {
      await expect(loadConfig(withFile({ rateLimit })), JSON.stringify(rateLimit)).rejects.toThrow(
        /config rateLimit must be/,
      );
    }
  });
});
