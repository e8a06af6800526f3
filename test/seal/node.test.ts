/**
 * Node edges, exercised through the built output (dist/) because worker threads load compiled files.
 * `npm test` builds before running the suite.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
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

describe('file outputs: worker counts, ranges, temporaries', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-out-'));
  const at = (f: string) => join(dir, f);
  const k = kek();
  const recipients = [{ type: 'kbs' as const, uri: URI, kek: k.secret }];
  // 10 MiB in 64 KiB chunks: three batches of 4 MiB when read as a range.
  const plain = randomBytes(10 * 1024 * 1024 + 5);
  writeFileSync(at('p'), plain);
  const sealed = dist.sealFile(at('p'), at('s'), { recipients, chunkSize: 65536, workers: 0 });

  it('refuses a worker count that is not a whole number ≥ 0 instead of waiting forever', async () => {
    await sealed;
    for (const workers of [Number.NaN, -1, 1.5]) {
      await expect(dist.sealFile(at('p'), at('w.sealed'), { recipients, workers })).rejects.toThrow(
        /workers must be a whole number ≥ 0/,
      );
      await expect(dist.sealFile(at('p'), '-', { recipients, workers })).rejects.toThrow(/workers must/);
      await expect(dist.unsealFile(at('s'), at('w.out'), k, { workers })).rejects.toThrow(/workers must/);
      await expect(dist.unsealToMemory(at('s'), k, { workers })).rejects.toThrow(/workers must/);
    }
    expect(readdirSync(dir).filter((f) => f.startsWith('w.') || f.startsWith('.w.'))).toEqual([]);
  });

  it('unsealRange writes through a temporary and replaces an existing file as 0600', async () => {
    await sealed;
    writeFileSync(at('r.out'), 'old contents');
    chmodSync(at('r.out'), 0o644);
    await expect(dist.unsealRange(at('s'), at('r.out'), k, 100, 9_000_000)).rejects.toThrow(/already exists/);
    await dist.unsealRange(at('s'), at('r.out'), k, 100, 9_000_000, { force: true });
    expect(statSync(at('r.out')).mode & 0o777).toBe(0o600);
    expect(readFileSync(at('r.out')).equals(plain.subarray(100, 9_000_000))).toBe(true);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('unsealRange leaves nothing behind when a chunk fails after earlier ones were written', async () => {
    await sealed;
    const bad = readFileSync(at('s'));
    bad[bad.length - 200_000] ^= 1; // in the third batch: two batches are written before it fails
    writeFileSync(at('bad'), bad);
    await expect(dist.unsealRange(at('bad'), at('bad.out'), k, 0, plain.length)).rejects.toMatchObject({
      code: 'chunk-tampered',
    });
    expect(readdirSync(dir).filter((f) => f.includes('bad.out'))).toEqual([]);
  });

  it('removes temporaries of the same output left by writers that died, and no others', async () => {
    await sealed;
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    const names = {
      dead: `.t.out.${dead}-${'a'.repeat(12)}.tmp`,
      live: `.t.out.${process.pid}-${'b'.repeat(12)}.tmp`,
      otherTarget: `.t.out.x.${dead}-${'c'.repeat(12)}.tmp`,
      notOurs: `.t.out.${dead}.tmp`,
    };
    for (const n of Object.values(names)) writeFileSync(at(n), 'plaintext left behind');
    await dist.unsealFile(at('s'), at('t.out'), k, { workers: 0 });
    expect(existsSync(at(names.dead))).toBe(false);
    for (const n of [names.live, names.otherTarget, names.notOurs]) expect(existsSync(at(n))).toBe(true);
    expect(readFileSync(at('t.out')).equals(plain)).toBe(true);
  });

  it("a dead writer's name on a directory, or on another user's file, neither stops the write nor is removed", async () => {
    await sealed;
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    const planted = at(`.p.out.${dead}-${'d'.repeat(12)}.tmp`);
    mkdirSync(planted);
    writeFileSync(join(planted, 'keep'), 'not a temporary');
    const foreign = at(`.p.out.${dead}-${'e'.repeat(12)}.tmp`);
    writeFileSync(foreign, "another user's file");
    // Only root can give a file to another user; elsewhere the file is simply this user's own.
    const asRoot = process.getuid?.() === 0;
    if (asRoot) chownSync(foreign, 65534, 65534);
    await dist.unsealFile(at('s'), at('p.out'), k, { workers: 0 });
    expect(readFileSync(at('p.out')).equals(plain)).toBe(true);
    expect(readFileSync(join(planted, 'keep'), 'utf8')).toBe('not a temporary');
    expect(existsSync(foreign)).toBe(asRoot);
  });

  it('refuses an input that grows while it is sealed on worker ranges, as the stream path does', async () => {
    const input = at('growing');
    writeFileSync(input, randomBytes(24 * 1024 * 1024));
    const job = dist.sealFile(input, at('g.sealed'), { recipients, chunkSize: 65536, workers: 2 });
    let settled = false;
    job.then(
      () => (settled = true),
      () => (settled = true),
    );
    // The temporary appears after the input's size was taken and before any worker has started.
    let grown = false;
    while (!grown && !settled) {
      if (readdirSync(dir).some((f) => f.startsWith('.g.sealed.'))) {
        appendFileSync(input, 'more');
        grown = true;
      } else await new Promise((r) => setImmediate(r));
    }
    expect(grown).toBe(true);
    await expect(job).rejects.toMatchObject({
      code: 'range',
      message: expect.stringMatching(/input is longer than the declared 25165824 bytes/),
    });
    expect(readdirSync(dir).filter((f) => f.includes('g.sealed'))).toEqual([]);
  });
});

describe('unsealToMemory with a final chunk shorter than a tag', () => {
  it('decrypts the chunk before it through scratch, not past the end of the buffer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cloister-mem-short-'));
    const k = kek();
    const plain = randomBytes(5 * 65536 + 11);
    writeFileSync(join(dir, 'p'), plain);
    await dist.sealFile(join(dir, 'p'), join(dir, 's'), {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: 65536,
    });
    for (const workers of [1, 2, 6]) {
      expect(Buffer.from(await dist.unsealToMemory(join(dir, 's'), k, { workers })).equals(plain)).toBe(true);
    }
  });
});

describe('openSealedPath', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-path-'));
  const at = (n: string) => join(dir, n);
  const k = kek();
  const plain = randomBytes(5 * 65536 + 11);

  it('one parsed header and one unwrap serve random access, a file and memory, on and off workers', async () => {
    writeFileSync(at('p'), plain);
    await dist.sealFile(at('p'), at('s'), {
      recipients: [{ type: 'kbs', uri: URI, kek: k.secret }],
      chunkSize: 65536,
    });
    const sealed = await dist.openSealedPath(at('s'));
    try {
      expect(sealed.name).toBe('p');
      expect(sealed.size).toBe(statSync(at('s')).size);
      expect(sealed.recipients.map((r) => r.keyId)).toEqual([URI]);
      const file = await sealed.unwrap(k);
      expect(
        Buffer.from(await (await file.reader()).read(65530, 65540)).equals(plain.subarray(65530, 65540)),
      ).toBe(true);
      for (const workers of [0, 2]) {
        await file.unsealTo(at(`out${workers}`), { workers });
        expect(readFileSync(at(`out${workers}`)).equals(plain)).toBe(true);
        expect(Buffer.from(await file.toMemory({ workers: workers || 1 })).equals(plain)).toBe(true);
      }
    } finally {
      await sealed.close();
    }
  });

  it('names the file in a format error, refuses a pipe, and refuses a cut body before any output', async () => {
    writeFileSync(at('short'), 'not sealed');
    await expect(dist.openSealedPath(at('short'))).rejects.toMatchObject({
      code: 'truncated',
      message: `${at('short')}: not a sealed file (too short)`,
    });
    await expect(dist.openSealedPath('-')).rejects.toThrow(/needs a regular file/);
    writeFileSync(at('cut'), readFileSync(at('s')).subarray(0, statSync(at('s')).size - 100));
    const cut = await dist.openSealedPath(at('cut'));
    try {
      await expect(cut.unwrap(k)).rejects.toMatchObject({ code: 'truncated' });
    } finally {
      await cut.close();
    }
    await expect(dist.unsealFile(at('cut'), at('cut.out'), k, { workers: 0 })).rejects.toMatchObject({
      code: 'truncated',
    });
    expect(readdirSync(dir).filter((f) => f.includes('cut.out'))).toEqual([]);
  });
});
