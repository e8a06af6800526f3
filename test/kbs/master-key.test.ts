import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it, vi } from 'vitest';
import { KbsClient } from '../../src/tee/kbs-client.js';
import { cliTimeouts, cloister } from '../cli/run.js';
import { sampleAttester, testBroker } from './helpers.js';

vi.setConfig(cliTimeouts());

const key = () => btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

it('rotates the master key: values re-encrypted, readable with the new key alone, logged', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-mk-'));
  const db = `sqlite:${join(dir, 'kbs.db')}`;
  writeFileSync(join(dir, 'old.key'), key());
  writeFileSync(join(dir, 'new.key'), key());
  const a = await testBroker({ devMode: true, db, masterKeyFile: join(dir, 'old.key') });
  expect(
    (
      await a.call(
        'PUT',
        '/admin/v1/resources/owner/keys/k1',
        await a.admin(),
        new TextEncoder().encode('v1'),
      )
    ).status,
  ).toBe(201);
  await a.close();

  const r = cloister([
    'kbs',
    'rotate-master-key',
    '--db',
    db,
    '--old',
    join(dir, 'old.key'),
    '--new',
    join(dir, 'new.key'),
  ]);
  expect(r.stderr).toMatch(/re-encrypted 1 resource/);
  expect(r.code).toBe(0);

  const b = await testBroker({ devMode: true, db, masterKeyFile: join(dir, 'new.key') });
  try {
    const client = new KbsClient({ url: b.url, attester: await sampleAttester() });
    expect(new TextDecoder().decode(await client.getResource('owner/keys/k1'))).toBe('v1');
    const log = await (await b.call('GET', '/admin/v1/log/entries', await b.admin())).json();
    expect(
      log.entries.some(
        (e: { kind: string; subject: string }) => e.kind === 'key' && e.subject === 'master-key',
      ),
    ).toBe(true);
  } finally {
    await b.close();
  }

  const rotate = (from: string, to: string) =>
    cloister(['kbs', 'rotate-master-key', '--db', db, '--old', join(dir, from), '--new', join(dir, to)]);
  // Rotating again is harmless; rotating from a key that no longer encrypts anything is refused.
  expect(rotate('old.key', 'new.key').code).toBe(0);
  writeFileSync(join(dir, 'other.key'), key());
  const wrong = rotate('old.key', 'other.key');
  expect(wrong.code).toBe(1);
  expect(wrong.stderr).toMatch(/not configured/);
  expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
});
