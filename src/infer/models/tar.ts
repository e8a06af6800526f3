/**
 * A tar reader and a small ustar writer, Web-standard only. A sealed model bundle is a tar of a
 * Hugging Face-style model directory that the server unseals into memory; this reads it there, so no
 * byte of the model touches disk. The reader returns regular files only and understands what GNU tar,
 * bsdtar and Python's tarfile write: ustar (with its 155-byte name prefix), pax extended headers
 * (`x` for the next entry, `g` for all that follow) and GNU long names (`L`).
 *
 * It is strict where a lenient reader would hide damage or danger: every header checksum is verified,
 * an archive must end with its end-of-archive block (so one cut short at a block boundary is still
 * caught), absolute paths, `..` components and duplicate paths are refused.
 */

const BLOCK = 512;
const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

export type TarErrorCode =
  /** Not a tar archive at all: the first block is not a ustar header. */
  | 'not-tar'
  /** The archive ends inside a header or a file's data, or before its end-of-archive block. */
  | 'truncated'
  /** A header fails its checksum. */
  | 'bad-checksum'
  /** A header or pax record is malformed (bad number, bad UTF-8, bad record length). */
  | 'bad-header'
  /** An entry type this reader does not support (GNU sparse or multi-volume files). */
  | 'unsupported'
  /** An absolute path or a `..` component. */
  | 'unsafe-path'
  /** The same file path twice; which one was meant is ambiguous. */
  | 'duplicate-path'
  /** The writer cannot represent a name or size in ustar. */
  | 'unrepresentable';

export class TarError extends Error {
  override name = 'TarError';
  constructor(
    readonly code: TarErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Header field offsets and lengths (POSIX ustar). */
const F = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  chksum: [148, 8],
  typeflag: [156, 1],
  linkname: [157, 100],
  magic: [257, 6],
  version: [263, 2],
  uname: [265, 32],
  gname: [297, 32],
  prefix: [345, 155],
} as const;

type Field = keyof typeof F;

function fieldBytes(block: Uint8Array, f: Field): Uint8Array {
  const [off, len] = F[f];
  return block.subarray(off, off + len);
}

/** A NUL-terminated (or full-width) text field. */
function textField(block: Uint8Array, f: Field, at: number): string {
  const raw = fieldBytes(block, f);
  const end = raw.indexOf(0);
  return decodeUtf8(end < 0 ? raw : raw.subarray(0, end), `${f} field of the header at offset ${at}`);
}

function decodeUtf8(bytes: Uint8Array, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new TarError('bad-header', `${what} is not valid UTF-8`);
  }
}

/**
 * A numeric field: octal digits, optionally space-padded and NUL/space-terminated, or GNU's base-256
 * form (high bit of the first byte set) that GNU tar uses for sizes of 8 GiB and more.
 */
function numberField(block: Uint8Array, f: Field, at: number): number {
  const raw = fieldBytes(block, f);
  if ((raw[0]! & 0x80) !== 0) {
    if ((raw[0]! & 0x40) !== 0)
      throw new TarError('bad-header', `negative ${f} in the header at offset ${at}`);
    let n = raw[0]! & 0x3f;
    for (let i = 1; i < raw.length; i++) {
      n = n * 256 + raw[i]!;
      if (n > Number.MAX_SAFE_INTEGER) throw new TarError('bad-header', `${f} too large at offset ${at}`);
    }
    return n;
  }
  let i = 0;
  while (i < raw.length && raw[i] === 0x20) i++;
  let n = 0;
  let digits = 0;
  for (; i < raw.length && raw[i] !== 0 && raw[i] !== 0x20; i++, digits++) {
    const d = raw[i]! - 0x30;
    if (d < 0 || d > 7) throw new TarError('bad-header', `${f} in the header at offset ${at} is not octal`);
    n = n * 8 + d;
  }
  for (; i < raw.length; i++) {
    if (raw[i] !== 0 && raw[i] !== 0x20) {
      throw new TarError('bad-header', `${f} in the header at offset ${at} is not octal`);
    }
  }
  if (digits === 0 && f === 'chksum') throw new TarError('bad-header', `empty checksum at offset ${at}`);
  return n;
}

/** The checksum as POSIX defines it (unsigned) and as some old writers computed it (signed bytes). */
function checksums(block: Uint8Array): [number, number] {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += b;
    signed += b >= 0x80 ? b - 256 : b;
  }
  return [unsigned, signed];
}

function isZeroBlock(block: Uint8Array): boolean {
  for (const b of block) if (b !== 0) return false;
  return true;
}

type Magic = 'posix' | 'gnu' | 'none';

function magicOf(block: Uint8Array): Magic {
  const m = fieldBytes(block, 'magic');
  const v = fieldBytes(block, 'version');
  // "ustar\0" + "00" (POSIX) or "ustar " + " \0" (old GNU); the version check is lenient because
  // some writers leave it blank.
  if (m[0] === 0x75 && m[1] === 0x73 && m[2] === 0x74 && m[3] === 0x61 && m[4] === 0x72) {
    if (m[5] === 0) return 'posix';
    if (m[5] === 0x20 && v[0] === 0x20 && v[1] === 0) return 'gnu';
  }
  return 'none';
}

/** Parses pax extended-header records: `"<len> <key>=<value>\n"`, where len counts the whole record. */
function parsePax(data: Uint8Array, at: number): Map<string, string> {
  const out = new Map<string, string>();
  let p = 0;
  while (p < data.length) {
    // Some writers pad the data with NULs after the last record.
    if (data[p] === 0) break;
    let q = p;
    let len = 0;
    while (q < data.length && data[q]! >= 0x30 && data[q]! <= 0x39 && q - p < 12)
      len = len * 10 + data[q++]! - 0x30;
    if (
      q === p ||
      data[q] !== 0x20 ||
      len <= q - p + 1 ||
      p + len > data.length ||
      data[p + len - 1] !== 0x0a
    ) {
      throw new TarError('bad-header', `malformed pax record at offset ${at + p}`);
    }
    const record = decodeUtf8(data.subarray(q + 1, p + len - 1), `pax record at offset ${at + p}`);
    const eq = record.indexOf('=');
    if (eq <= 0) throw new TarError('bad-header', `pax record without a key at offset ${at + p}`);
    out.set(record.slice(0, eq), record.slice(eq + 1));
    p += len;
  }
  return out;
}

function paxSize(value: string, at: number): number {
  if (!/^[0-9]{1,16}$/.test(value) || Number(value) > Number.MAX_SAFE_INTEGER) {
    throw new TarError('bad-header', `bad pax size "${value}" for the entry at offset ${at}`);
  }
  return Number(value);
}

/** Strips a GNU long name's trailing NULs (its data is NUL-terminated). */
function cString(data: Uint8Array, what: string): string {
  const end = data.indexOf(0);
  return decodeUtf8(end < 0 ? data : data.subarray(0, end), what);
}

/**
 * A relative path with `.` and empty components dropped (`./a//b` → `a/b`); absolute paths and `..`
 * are refused so that a bundle cannot name a file outside its own directory.
 */
function safePath(name: string, at: number): string {
  if (name.startsWith('/')) throw new TarError('unsafe-path', `absolute path "${name}" at offset ${at}`);
  const parts = name.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.includes('..')) throw new TarError('unsafe-path', `path "${name}" at offset ${at} contains ".."`);
  return parts.join('/');
}

/**
 * Reads the regular files of a tar archive. The returned bytes are views into `archive` (no copy), so
 * a bundle of several hundred MB is not held twice. Directories, links and device entries are skipped.
 */
export function readTar(archive: Uint8Array): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  const global = new Map<string, string>();
  let local = new Map<string, string>();
  let longName: string | undefined;
  let off = 0;
  for (;;) {
    if (off + BLOCK > archive.length) {
      if (off === 0 && archive.length < BLOCK) {
        throw new TarError(
          'not-tar',
          `not a tar archive: ${archive.length} bytes is shorter than one header`,
        );
      }
      throw new TarError(
        'truncated',
        `tar archive ends at offset ${archive.length} without its end-of-archive block`,
      );
    }
    const header = archive.subarray(off, off + BLOCK);
    if (isZeroBlock(header)) {
      if (local.size > 0 || longName !== undefined) {
        throw new TarError('bad-header', `extended header at the end of the archive describes no entry`);
      }
      return files;
    }
    const magic = magicOf(header);
    if (magic === 'none') {
      if (off === 0) throw new TarError('not-tar', 'not a tar archive: no ustar header at offset 0');
      throw new TarError('bad-header', `the block at offset ${off} is not a ustar header (corrupt archive)`);
    }
    const [unsigned, signed] = checksums(header);
    const stored = numberField(header, 'chksum', off);
    if (stored !== unsigned && stored !== signed) {
      throw new TarError('bad-checksum', `header checksum mismatch at offset ${off} (corrupt archive)`);
    }
    const type = String.fromCharCode(header[F.typeflag[0]]!);
    let size = numberField(header, 'size', off);
    const paxSizeValue = local.get('size') ?? global.get('size');
    if (paxSizeValue !== undefined && type !== 'x' && type !== 'g') size = paxSize(paxSizeValue, off);
    const dataStart = off + BLOCK;
    if (dataStart + size > archive.length) {
      throw new TarError(
        'truncated',
        `tar archive is truncated: the entry at offset ${off} needs ${size} bytes of data, ${Math.max(0, archive.length - dataStart)} remain`,
      );
    }
    const data = archive.subarray(dataStart, dataStart + size);
    const headerAt = off;
    off = dataStart + Math.ceil(size / BLOCK) * BLOCK;

    switch (type) {
      case 'x':
        for (const [k, v] of parsePax(data, dataStart)) local.set(k, v);
        continue;
      case 'g':
        for (const [k, v] of parsePax(data, dataStart)) global.set(k, v);
        continue;
      case 'L':
        longName = cString(data, `GNU long name at offset ${headerAt}`);
        continue;
      case 'K':
        // A GNU long link target: only links use it, and links are skipped.
        continue;
      case 'S':
      case 'M':
        throw new TarError(
          'unsupported',
          `entry at offset ${headerAt} is a GNU ${type === 'S' ? 'sparse' : 'multi-volume'} file, which is not supported`,
        );
    }

    let name = local.get('path') ?? longName ?? global.get('path');
    if (name === undefined) {
      name = textField(header, 'name', headerAt);
      const prefix = magic === 'posix' ? textField(header, 'prefix', headerAt) : '';
      if (prefix !== '') name = `${prefix}/${name}`;
    }
    local = new Map();
    longName = undefined;

    // '0' and NUL are regular files, '7' a contiguous file (a regular file everywhere that matters).
    if (type !== '0' && type !== '\0' && type !== '7') continue;
    const path = safePath(name, headerAt);
    if (path === '')
      throw new TarError('bad-header', `regular file with an empty name at offset ${headerAt}`);
    if (files.has(path)) throw new TarError('duplicate-path', `"${path}" appears twice in the archive`);
    files.set(path, data);
  }
}

function writeOctal(block: Uint8Array, f: Field, value: number): void {
  const [off, len] = F[f];
  // len - 1 octal digits and a terminating NUL.
  const digits = value.toString(8).padStart(len - 1, '0');
  if (digits.length > len - 1)
    throw new TarError('unrepresentable', `${f} ${value} does not fit a ustar header`);
  block.set(encoder.encode(digits), off);
}

/** Splits a path into ustar's prefix (≤155 bytes) and name (≤100 bytes) at a `/`. */
function splitName(path: string): [string, string] {
  const bytes = encoder.encode(path);
  if (bytes.length <= 100) return ['', path];
  for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (encoder.encode(prefix).length <= 155 && encoder.encode(name).length <= 100 && name !== '') {
      return [prefix, name];
    }
  }
  throw new TarError('unrepresentable', `path "${path}" is too long for a ustar header`);
}

/**
 * Writes regular files as a ustar archive (mode 0644, owner 0, mtime 0, so equal input gives equal
 * bytes). Paths must be relative, without `.`/`..` components, and fit ustar's 155+100-byte split.
 */
export function writeTar(files: Iterable<readonly [string, Uint8Array]>): Uint8Array {
  const blocks: Uint8Array[] = [];
  let total = 0;
  const seen = new Set<string>();
  for (const [path, data] of files) {
    if (safePath(path, 0) !== path || path === '') {
      throw new TarError('unsafe-path', `"${path}" is not a normalised relative path`);
    }
    if (seen.has(path)) throw new TarError('duplicate-path', `"${path}" given twice`);
    seen.add(path);
    const [prefix, name] = splitName(path);
    const header = new Uint8Array(BLOCK);
    header.set(encoder.encode(name), F.name[0]);
    writeOctal(header, 'mode', 0o644);
    writeOctal(header, 'uid', 0);
    writeOctal(header, 'gid', 0);
    writeOctal(header, 'size', data.length);
    writeOctal(header, 'mtime', 0);
    header[F.typeflag[0]] = 0x30;
    header.set(encoder.encode('ustar\u000000'), F.magic[0]);
    header.set(encoder.encode(prefix), F.prefix[0]);
    const [sum] = checksums(header);
    // Six octal digits, NUL, space: the form GNU tar writes.
    header.set(encoder.encode(`${sum.toString(8).padStart(6, '0')}\u0000 `), F.chksum[0]);
    const padded = new Uint8Array(Math.ceil(data.length / BLOCK) * BLOCK);
    padded.set(data);
    blocks.push(header, padded);
    total += BLOCK + padded.length;
  }
  const out = new Uint8Array(total + 2 * BLOCK);
  let o = 0;
  for (const b of blocks) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}
