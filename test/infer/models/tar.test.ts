/**
 * The tar reader against archives made by the system's GNU tar in each of its formats (gnu: long names
 * as 'L' entries; posix: pax 'x' and 'g' headers; ustar: the name prefix), the writer against GNU tar
 * reading its output back, and every kind of damaged or hostile archive.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readTar, TarError, writeTar } from '../../../src/infer/models/tar.js';

const enc = new TextEncoder();

function bytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7) & 0xff);
}

/** 140 bytes, in components short enough for ustar's prefix/name split. */
const LONG_PATH = `${'deep/'.repeat(4)}${'directory-name-'.repeat(3)}x/${'a-rather-long-file-name-'.repeat(3)}.bin`;

const FILES: [string, Uint8Array][] = [
  ['model.onnx', bytes(1025, 1)],
  ['onnx/empty.txt', new Uint8Array(0)],
  ['onnx/block.bin', bytes(512, 2)],
  ['one.byte', bytes(1, 3)],
  ['unicodé/名前.json', enc.encode('{"ok":true}')],
  [LONG_PATH, bytes(700, 4)],
];

const tempDirs: string[] = [];
afterAll(() => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-tar-'));
  tempDirs.push(dir);
  return dir;
}

function makeTree(): string {
  const dir = tempDir();
  const root = join(dir, 'tree');
  for (const [path, data] of FILES) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), data);
  }
  return dir;
}

function gnuTar(cwd: string, args: string[]): Uint8Array {
  return new Uint8Array(execFileSync('tar', args, { cwd, maxBuffer: 1 << 24 }));
}

function expectFiles(got: Map<string, Uint8Array>, prefix = ''): void {
  expect([...got.keys()].sort()).toEqual(FILES.map(([p]) => prefix + p).sort());
  for (const [path, data] of FILES) expect(got.get(prefix + path)).toEqual(data);
}

function tarError(f: () => unknown): TarError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(TarError);
    return e as TarError;
  }
  throw new Error('expected a TarError');
}

/** Rewrites one header of a copy of `archive` and fixes its checksum, so only the change is wrong. */
function patchHeader(archive: Uint8Array, at: number, change: (h: Uint8Array) => void): Uint8Array {
  const out = archive.slice();
  const h = out.subarray(at, at + 512);
  change(h);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.set(enc.encode(`${sum.toString(8).padStart(6, '0')}\0 `), 148);
  return out;
}

function setText(h: Uint8Array, off: number, len: number, text: string): void {
  h.fill(0, off, off + len);
  h.set(enc.encode(text), off);
}

/** A pax extended header ('x' or 'g') with the given records, as a header block plus data blocks. */
function paxEntry(type: 'x' | 'g', records: Record<string, string>): Uint8Array {
  let body = '';
  for (const [k, v] of Object.entries(records)) {
    const rest = ` ${k}=${v}\n`;
    let len = rest.length + 1;
    while (`${len}${rest}`.length !== len) len++;
    body += `${len}${rest}`;
  }
  const data = enc.encode(body);
  const entry = writeTar([['pax', data]]).subarray(0, 512 + Math.ceil(data.length / 512) * 512);
  return patchHeader(entry, 0, (h) => {
    h[156] = type.charCodeAt(0);
  });
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

describe('readTar on archives written by GNU tar', () => {
  const dir = makeTree();

  for (const format of ['gnu', 'posix', 'ustar']) {
    it(`reads --format=${format}, including a ${LONG_PATH.length}-byte path`, () => {
      expectFiles(
        readTar(gnuTar(join(dir, 'tree'), [`--format=${format}`, '-cf', '-', ...FILES.map(([p]) => p)])),
      );
    });
  }

  it('reads an archive of a whole directory: "./" dropped, directories skipped', () => {
    expectFiles(readTar(gnuTar(dir, ['-C', 'tree', '-cf', '-', '.'])));
    expectFiles(readTar(gnuTar(dir, ['-cf', '-', 'tree'])), 'tree/');
  });

  it('applies a pax global header and skips symbolic links', () => {
    symlinkSync('model.onnx', join(dir, 'tree', 'link.onnx'));
    try {
      const archive = gnuTar(join(dir, 'tree'), [
        '--format=posix',
        '--pax-option=comment=hello',
        '-cf',
        '-',
        '.',
      ]);
      expect(new TextDecoder().decode(archive.subarray(156, 157))).toBe('g');
      expectFiles(readTar(archive));
    } finally {
      execFileSync('rm', [join(dir, 'tree', 'link.onnx')]);
    }
  });

  it('takes a path from a pax global header when nothing more specific names the entry', () => {
    const entry = writeTar([['ignored', enc.encode('x')]]).subarray(0, 1024);
    const archive = concat(paxEntry('g', { path: 'from/global' }), entry, new Uint8Array(1024));
    expect([...readTar(archive).keys()]).toEqual(['from/global']);
  });

  it('returns views into the archive rather than copies', () => {
    const archive = writeTar([['a', bytes(10, 5)]]);
    const a = readTar(archive).get('a')!;
    expect(a.buffer).toBe(archive.buffer);
  });

  it('reads an empty archive as no files', () => {
    expect(readTar(gnuTar(dir, ['-cf', '-', '-T', '/dev/null'])).size).toBe(0);
  });
});

describe('writeTar', () => {
  it('round-trips through readTar, with equal input giving equal bytes', () => {
    const a = writeTar(FILES);
    expectFiles(readTar(a));
    expect(writeTar(FILES)).toEqual(a);
    expect(a.length % 512).toBe(0);
  });

  it('writes archives GNU tar lists and extracts byte for byte', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'a.tar'), writeTar(FILES));
    const listing = execFileSync('tar', ['-tf', 'a.tar'], { cwd: dir, encoding: 'utf8' }).trim().split('\n');
    expect(listing.sort()).toEqual(FILES.map(([p]) => p).sort());
    mkdirSync(join(dir, 'out'));
    execFileSync('tar', ['-xf', '../a.tar'], { cwd: join(dir, 'out') });
    for (const [path, data] of FILES)
      expect(new Uint8Array(readFileSync(join(dir, 'out', path)))).toEqual(data);
  });

  it('refuses what ustar cannot hold or a reader would refuse', () => {
    expect(tarError(() => writeTar([[`${'n'.repeat(101)}`, new Uint8Array(0)]])).code).toBe(
      'unrepresentable',
    );
    expect(tarError(() => writeTar([[`${'p/'.repeat(128)}x`, new Uint8Array(0)]])).code).toBe(
      'unrepresentable',
    );
    expect(tarError(() => writeTar([['/etc/passwd', new Uint8Array(0)]])).code).toBe('unsafe-path');
    expect(tarError(() => writeTar([['a/../b', new Uint8Array(0)]])).code).toBe('unsafe-path');
    expect(tarError(() => writeTar([['./a', new Uint8Array(0)]])).code).toBe('unsafe-path');
    expect(tarError(() => writeTar([['', new Uint8Array(0)]])).code).toBe('unsafe-path');
    const twice: [string, Uint8Array][] = [
      ['a', new Uint8Array(1)],
      ['a', new Uint8Array(2)],
    ];
    expect(tarError(() => writeTar(twice)).code).toBe('duplicate-path');
  });
});

describe('readTar refuses damaged and hostile archives', () => {
  const good = writeTar([
    ['first', bytes(600, 6)],
    ['second', bytes(10, 7)],
  ]);
  /** Offset of the second header: first header, then 600 bytes of data padded to 1024. */
  const SECOND = 512 + 1024;

  it('refuses input that is not tar', () => {
    expect(tarError(() => readTar(good.subarray(0, 100))).message).toMatch(/shorter than one header/);
    expect(tarError(() => readTar(new Uint8Array(0))).code).toBe('not-tar');
    expect(tarError(() => readTar(enc.encode('{"model": "not a tar"}'))).code).toBe('not-tar');
    expect(tarError(() => readTar(bytes(4096, 8))).code).toBe('not-tar');
    const gzip = execFileSync('gzip', ['-c'], { input: good });
    expect(tarError(() => readTar(new Uint8Array(gzip))).message).toMatch(/not a tar archive/);
  });

  it('refuses an archive cut short anywhere', () => {
    for (const cut of [512, 700, SECOND + 200, SECOND + 512 + 5, good.length - 1024, good.length - 512 - 1]) {
      const e = tarError(() => readTar(good.subarray(0, cut)));
      expect(e.code, `cut at ${cut}`).toBe('truncated');
    }
  });

  it('refuses a corrupt header', () => {
    const flipped = good.slice();
    flipped[SECOND + 1] ^= 0x01;
    expect(tarError(() => readTar(flipped))).toMatchObject({ code: 'bad-checksum' });
    const first = good.slice();
    first[3] ^= 0x40;
    expect(tarError(() => readTar(first))).toMatchObject({ code: 'bad-checksum' });
    const notHeader = good.slice();
    notHeader.set(bytes(512, 9), SECOND);
    expect(tarError(() => readTar(notHeader)).code).toBe('bad-header');
    const badSize = patchHeader(good, SECOND, (h) => setText(h, 124, 12, '00000000x12'));
    expect(tarError(() => readTar(badSize)).message).toMatch(/size .* not octal/);
  });

  it('refuses absolute paths and ".." however they are spelled', () => {
    const dir = makeTree();
    const abs = gnuTar(dir, ['-P', '-cf', '-', join(dir, 'tree', 'one.byte')]);
    expect(tarError(() => readTar(abs))).toMatchObject({ code: 'unsafe-path' });
    const up = gnuTar(join(dir, 'tree', 'onnx'), ['-P', '-cf', '-', '../one.byte']);
    expect(tarError(() => readTar(up)).message).toMatch(/"\.\.\/one\.byte".*\.\./);
    const viaPrefix = patchHeader(good, 0, (h) => setText(h, 345, 155, 'a/../..'));
    expect(tarError(() => readTar(viaPrefix)).code).toBe('unsafe-path');
    const viaPax = concat(paxEntry('x', { path: '../../etc/cron.d/x' }), good);
    expect(tarError(() => readTar(viaPax)).code).toBe('unsafe-path');
    const longUp = `${'x/'.repeat(60)}${'../'.repeat(61)}`;
    // GNU tar stores the >100-byte name as an 'L' entry and, with -P, keeps its "..".
    const viaLongName = gnuTar(join(dir, 'tree'), [
      '-P',
      '--format=gnu',
      '-cf',
      '-',
      '--transform',
      `s|^|${longUp}|`,
      'one.byte',
    ]);
    expect(new TextDecoder().decode(viaLongName.subarray(0, 13))).toBe('././@LongLink');
    expect(tarError(() => readTar(viaLongName)).code).toBe('unsafe-path');
  });

  it('refuses a path that appears twice', () => {
    const dir = makeTree();
    const tree = join(dir, 'tree');
    const archive = join(dir, 'twice.tar');
    execFileSync('tar', ['-cf', archive, 'one.byte'], { cwd: tree });
    execFileSync('tar', ['-rf', archive, './one.byte'], { cwd: tree });
    expect(tarError(() => readTar(new Uint8Array(readFileSync(archive))))).toMatchObject({
      code: 'duplicate-path',
      message: expect.stringMatching(/"one\.byte" appears twice/),
    });
  });

  it('refuses GNU sparse files rather than returning their raw map', () => {
    const sparse = patchHeader(good, 0, (h) => {
      h[156] = 'S'.charCodeAt(0);
    });
    expect(tarError(() => readTar(sparse))).toMatchObject({ code: 'unsupported' });
  });

  it('refuses malformed pax records and a pax header that describes nothing', () => {
    const bad = paxEntry('x', { path: 'x' });
    expect(new TextDecoder().decode(bad.subarray(512, 521))).toBe('9 path=x\n');
    bad[512] = 0x37; // the record's length no longer ends at its newline
    expect(tarError(() => readTar(concat(bad, good))).code).toBe('bad-header');
    const size = concat(paxEntry('x', { size: '-1' }), good);
    expect(tarError(() => readTar(size)).message).toMatch(/bad pax size/);
    const dangling = concat(
      good.subarray(0, good.length - 1024),
      paxEntry('x', { path: 'y' }),
      new Uint8Array(1024),
    );
    expect(tarError(() => readTar(dangling)).message).toMatch(/describes no entry/);
  });
});
