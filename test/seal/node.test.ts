/**
 * Node edges, exercised through the built output (dist/) because worker threads load compiled files.
 * `npm test` builds before running the suite.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type * as NodeSeal from '../../src/seal/node.js';
import { kek, URI } from './helpers.js';

const dist = (await import(new URL('../../dist/seal/node.js', import.meta.url).href)) as typeof NodeSeal;

describe('unsealToMemory', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-mem-'));
  const k = kek();
  const plain = randomBytes(5 * 65536 + 123);

  it('decrypts on worker threads into one buffer, for any number of workers', async () => {
    writeFileSync(join(dir, 'p'), plain);
    await dist.sealFile(join(dir, 'p'), join(dir, 's'), {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: 65536,
    });
    for (const workers of [1, 2, 3, 6]) {
      const out = await dist.unsealToMemory(join(dir, 's'), k, { workers });
      expect(Buffer.from(out).equals(plain)).toBe(true);
    }
  });

  it('refuses a tampered chunk in any worker range', async () => {
    const bad = readFileSync(join(dir, 's'));
    bad[bad.length - 70000] ^= 0x80;
    writeFileSync(join(dir, 'bad'), bad);
    await expect(dist.unsealToMemory(join(dir, 'bad'), k, { workers: 2 })).rejects.toMatchObject({
      code: 'chunk-tampered',
    });
    await expect(dist.unsealToMemory(join(dir, 'bad'), k, { workers: 1 })).rejects.toMatchObject({
      code: 'chunk-tampered',
    });
  });

  it('refuses a truncated file before decrypting', async () => {
    writeFileSync(join(dir, 'short'), readFileSync(join(dir, 's')).subarray(0, 3 * 65552 + 200));
    await expect(dist.unsealToMemory(join(dir, 'short'), k, { workers: 2 })).rejects.toMatchObject({
      code: 'truncated',
    });
  });
});

describe('file-to-file on worker ranges (positional I/O, in-place chunks)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-ranges-'));
  const k = kek();
  const plain = randomBytes(9 * 65536 + 77);
  const recipients = [{ type: 'kbs' as const, uri: URI, kek: k.secret }];

  it('produces files the stream path reads, and reads files the stream path wrote', async () => {
    writeFileSync(join(dir, 'p'), plain);
    await dist.sealFile(join(dir, 'p'), join(dir, 'fast.sealed'), {
      recipients,
      chunkSize: 65536,
      workers: 3,
    });
    await dist.unsealFile(join(dir, 'fast.sealed'), join(dir, 'slow.out'), k, { workers: 0 });
    expect(readFileSync(join(dir, 'slow.out')).equals(plain)).toBe(true);
    await dist.sealFile(join(dir, 'p'), join(dir, 'slow.sealed'), {
      recipients,
      chunkSize: 65536,
      workers: 0,
    });
    await dist.unsealFile(join(dir, 'slow.sealed'), join(dir, 'fast.out'), k, { workers: 2 });
    expect(readFileSync(join(dir, 'fast.out')).equals(plain)).toBe(true);
  });

  it('refuses a tampered chunk and leaves neither output nor temporary file', async () => {
    const bad = readFileSync(join(dir, 'fast.sealed'));
    bad[bad.length - 200_000] ^= 1;
    writeFileSync(join(dir, 'bad.sealed'), bad);
    await expect(
      dist.unsealFile(join(dir, 'bad.sealed'), join(dir, 'bad.out'), k, { workers: 2 }),
    ).rejects.toMatchObject({ code: 'chunk-tampered' });
    expect(readdirSync(dir).filter((f) => f.includes('bad.out'))).toEqual([]);
  });

  it('seals an empty file', async () => {
    writeFileSync(join(dir, 'empty'), '');
    await dist.sealFile(join(dir, 'empty'), join(dir, 'empty.sealed'), { recipients, workers: 2 });
    expect((await dist.unsealToMemory(join(dir, 'empty.sealed'), k)).length).toBe(0);
  });
});

describe('sha256FileOffThread', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-digest-'));

  it('hashes a file on a worker, across read buffers, the way sha256sum does', async () => {
    const bytes = randomBytes(9 * 1024 * 1024 + 7);
    writeFileSync(join(dir, 'f'), bytes);
    const want = createHash('sha256').update(bytes).digest('hex');
    expect(await dist.sha256FileOffThread(join(dir, 'f'))).toBe(`sha256:${want}`);
    writeFileSync(join(dir, 'empty'), '');
    expect(await dist.sha256FileOffThread(join(dir, 'empty'))).toBe(
      `sha256:${createHash('sha256').digest('hex')}`,
    );
  });

  it('rejects a missing file with the reason', async () => {
    await expect(dist.sha256FileOffThread(join(dir, 'missing'))).rejects.toThrow(/ENOENT/);
  });
});
