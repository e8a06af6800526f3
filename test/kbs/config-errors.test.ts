/**
 * A broker that cannot start says which file is wrong, in one line: a PEM or a typo in a key file, a
 * configuration that is not JSON, an SQLite database whose folder does not exist.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startBroker } from '../../src/kbs/app.js';
import { DEFAULT_CONFIG, loadConfig } from '../../src/kbs/config.js';
import { openStore } from '../../src/kbs/index.js';
import { buildLogEntry } from '../../src/kbs/log.js';
import { tempDir } from '../cli/run.js';
import { testKeys } from './helpers.js';

const PEM =
  '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n';

/** Starts a broker on a fresh SQLite file with `bad` replacing one key file; returns its refusal. */
async function refusal(key: 'earKeyFile' | 'logKeyFile' | 'adminKeysFile', text: string): Promise<string> {
  const keys = await testKeys();
  const file = join(keys.dir, `bad-${key}`);
  writeFileSync(file, text);
  const started = startBroker(
    {
      ...DEFAULT_CONFIG,
      port: 0,
      db: `sqlite:${join(keys.dir, 'kbs.db')}`,
      masterKeyFile: keys.masterKeyFile,
      earKeyFile: keys.earKeyFile,
      logKeyFile: keys.logKeyFile,
      adminKeysFile: keys.adminKeysFile,
      [key]: file,
    },
    { log: () => {} },
  );
  const e = await started.then(
    async (b) => {
      await b.close();
      throw new Error('the broker started');
    },
    (err: Error) => err,
  );
  expect(e.message).not.toContain('\n');
  expect(e.message.startsWith(`${file}: `), e.message).toBe(true);
  return e.message;
}

describe('configuration errors name their file', () => {
  it('a PEM where a JWK belongs says so, and which command makes the JWK', async () => {
    expect(await refusal('earKeyFile', PEM)).toMatch(
      /: not a JWK \(JSON expected; this is a PEM file: make a JWK with cloister kbs keygen --ear\)$/,
    );
    expect(await refusal('logKeyFile', PEM)).toMatch(/not a JWK .*cloister log keygen\)$/);
    expect(await refusal('adminKeysFile', PEM)).toMatch(/not a JWK .*cloister kbs admin-key\)$/);
  });

  it('JSON that does not parse is named, without quoting the file (it may be a secret)', async () => {
    const secret = 'piuzK3/0a/Qm9vIGJv';
    const line = await refusal('earKeyFile', secret);
    expect(line).toMatch(
      /bad-earKeyFile: not a JWK \(JSON expected, and this does not parse as JSON; make one with cloister kbs keygen --ear\)$/,
    );
    expect(line).not.toContain(secret.slice(0, 4));
    expect(await refusal('logKeyFile', '{"kty": ')).toMatch(
      /: not a JWK \(JSON expected, and this does not parse/,
    );
    expect(await refusal('adminKeysFile', 'null')).toMatch(/: not a JWK, JWK array or JWKS \(found null\)$/);
  });

  it('a log key of the wrong kind, or an EAR key that is not P-256, names the file too', async () => {
    expect(await refusal('logKeyFile', '{"kty":"EC","kid":"x"}')).toMatch(/Ed25519 private JWK/);
    expect(await refusal('earKeyFile', '{"kty":"OKP","crv":"Ed25519","d":"AA"}')).toMatch(
      /the EAR key must be a private EC P-256 JWK/,
    );
  });

  it('kbs.json that is not JSON, or not an object, is refused naming the file', async () => {
    const dir = tempDir();
    const file = join(dir, 'kbs.json');
    writeFileSync(file, '{ "port": 8080, }');
    await expect(loadConfig(file)).rejects.toThrow(new RegExp(`^${file}: not JSON \\(.+\\)$`));
    writeFileSync(file, '[]');
    await expect(loadConfig(file)).rejects.toThrow(`${file}: not a configuration`);
  });

  it('an SQLite database in a folder that does not exist: one line naming the folder', async () => {
    const dir = join(tempDir(), 'no', 'such');
    const url = `sqlite:${join(dir, 'kbs.db')}`;
    await expect(openStore(url, { buildLogEntry })).rejects.toThrow(
      `${url}: directory ${dir} does not exist`,
    );
  });
});
