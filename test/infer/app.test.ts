import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startInference } from '../../src/infer/app.js';
import { generateKek } from '../../src/seal/keys.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';

const parent = mkdtempSync(join(tmpdir(), 'cloister-app-'));
afterAll(() => rmSync(parent, { recursive: true, force: true }));

describe('startInference', () => {
  it('a start that fails leaves no private directory behind', async () => {
    const lines: string[] = [];
    await expect(
      startInference({
        models: [join(parent, 'missing.sealed')],
        tee: { cpu: new InsecureSampleAttester() },
        keys: { local: generateKek() },
        privateDir: { parent, allowDisk: true },
        engines: { gpu: false, parallel: 1 },
        maxQueued: 1,
        allowPlaintext: false,
        host: '127.0.0.1',
        port: 0,
        log: (line) => lines.push(line),
      }),
    ).rejects.toThrow(/missing\.sealed/);
    expect(readdirSync(parent)).toEqual([]);
  });

  it('refuses shared serving keys from a file outside the sample TEE, before loading anything', async () => {
    const cpu = new InsecureSampleAttester();
    Object.defineProperty(cpu, 'insecure', { value: false });
    await expect(
      startInference({
        models: [join(parent, 'missing.sealed')],
        tee: { cpu },
        keys: { local: generateKek() },
        servingKeys: join(parent, 'keys.json'),
        replayRedis: 'redis://127.0.0.1:1',
        privateDir: { parent, allowDisk: true },
        engines: { gpu: false, parallel: 1 },
        maxQueued: 1,
        allowPlaintext: false,
        host: '127.0.0.1',
        port: 0,
        log: () => {},
      }),
    ).rejects.toThrow(/a key file is for development in the sample TEE only/);
    expect(readdirSync(parent)).toEqual([]);
  });
});
