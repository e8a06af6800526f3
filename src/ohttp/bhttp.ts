/**
 * Binary HTTP messages (RFC 9292). Encoding writes the known-length form; decoding reads both the
 * known-length and the indeterminate-length form. Trailing empty sections may be truncated (§3.8) and
 * zero padding may follow a message (§3.8); any other trailing byte, and every length that runs past
 * the input, is refused with an OhttpError.
 */
import { concatBytes, utf8 } from '../util/index.js';
import { OhttpError } from './errors.js';
import { encodeVarint, VarReader } from './varint.js';

/** A field line: lower-case name and value, as UTF-8 text. */
export type Field = [name: string, value: string];

export interface BhttpRequest {
  method: string;
  scheme: string;
  authority: string;
  path: string;
  headers: Field[];
  content: Uint8Array;
  trailers: Field[];
}

export interface InformationalResponse {
  status: number;
  headers: Field[];
}

export interface BhttpResponse {
  informational: InformationalResponse[];
  status: number;
  headers: Field[];
  content: Uint8Array;
  trailers: Field[];
}

const KNOWN_REQUEST = 0;
const KNOWN_RESPONSE = 1;
const INDETERMINATE_REQUEST = 2;
const INDETERMINATE_RESPONSE = 3;

const strict = new TextDecoder('utf-8', { fatal: true });

function lp(bytes: Uint8Array): Uint8Array {
  return concatBytes(encodeVarint(bytes.length), bytes);
}

function encodeFields(fields: Field[]): Uint8Array {
  const lines = fields.map(([n, v]) => concatBytes(lp(utf8.encode(n)), lp(utf8.encode(v))));
  return lp(concatBytes(...lines));
}

export function encodeRequest(r: Partial<BhttpRequest> & { method: string; path: string }): Uint8Array {
  return concatBytes(
    encodeVarint(KNOWN_REQUEST),
    lp(utf8.encode(r.method)),
    lp(utf8.encode(r.scheme ?? 'https')),
    lp(utf8.encode(r.authority ?? '')),
    lp(utf8.encode(r.path)),
    encodeFields(r.headers ?? []),
    lp(r.content ?? new Uint8Array(0)),
    encodeFields(r.trailers ?? []),
  );
}

export function encodeResponse(r: Partial<BhttpResponse> & { status: number }): Uint8Array {
  const parts: Uint8Array[] = [encodeVarint(KNOWN_RESPONSE)];
  for (const i of r.informational ?? []) {
    checkStatus(i.status, true);
    parts.push(encodeVarint(i.status), encodeFields(i.headers));
  }
  checkStatus(r.status, false);
  parts.push(
    encodeVarint(r.status),
    encodeFields(r.headers ?? []),
    lp(r.content ?? new Uint8Array(0)),
    encodeFields(r.trailers ?? []),
  );
  return concatBytes(...parts);
}

function checkStatus(status: number, informational: boolean): void {
  const ok = informational ? status >= 100 && status <= 199 : status >= 200 && status <= 599;
  if (!Number.isInteger(status) || !ok) {
    throw new OhttpError(
      'bad-status',
      `${status} is not a valid ${informational ? 'informational' : 'final'} status code`,
    );
  }
}

function text(bytes: Uint8Array, field: string): string {
  try {
    return strict.decode(bytes);
  } catch {
    throw new OhttpError('bad-message', `binary HTTP ${field} is not valid UTF-8`);
  }
}

function decodeFieldLines(r: VarReader, field: string, indeterminate: boolean): Field[] {
  const out: Field[] = [];
  for (;;) {
    if (indeterminate) {
      const nameLen = r.varint(`${field} name length`);
      if (nameLen === 0) return out;
      const name = text(r.take(nameLen, `${field} name`), `${field} name`);
      out.push([name, text(r.lengthPrefixed(`${field} value`), `${field} value`)]);
    } else {
      if (r.atEnd()) return out;
      const name = text(r.lengthPrefixed(`${field} name`), `${field} name`);
      if (name.length === 0) throw new OhttpError('bad-message', `binary HTTP ${field} has an empty name`);
      out.push([name, text(r.lengthPrefixed(`${field} value`), `${field} value`)]);
    }
  }
}

function decodeFields(r: VarReader, field: string, indeterminate: boolean): Field[] {
  if (indeterminate) return decodeFieldLines(r, field, true);
  return decodeFieldLines(new VarReader(r.lengthPrefixed(field), `binary HTTP ${field}`), field, false);
}

function decodeContent(r: VarReader, indeterminate: boolean): Uint8Array {
  if (!indeterminate) return r.lengthPrefixed('content').slice();
  const chunks: Uint8Array[] = [];
  for (;;) {
    const len = r.varint('content chunk length');
    if (len === 0) return concatBytes(...chunks);
    chunks.push(r.take(len, 'content chunk'));
  }
}

/** Only zero bytes may follow a complete message (padding, RFC 9292 §3.8). */
function checkPadding(r: VarReader): void {
  const rest = r.take(r.remaining, 'padding');
  if (rest.some((b) => b !== 0)) {
    throw new OhttpError(
      'trailing-bytes',
      `${rest.length} bytes after the binary HTTP message are not zero padding`,
    );
  }
}

interface Tail {
  headers: Field[];
  content: Uint8Array;
  trailers: Field[];
}

/** Header section, content and trailers; each may be cut off when it and all after it are empty. */
function decodeTail(r: VarReader, indeterminate: boolean): Tail {
  const tail: Tail = { headers: [], content: new Uint8Array(0), trailers: [] };
  if (r.atEnd()) return tail;
  tail.headers = decodeFields(r, 'header section', indeterminate);
  if (r.atEnd()) return tail;
  tail.content = decodeContent(r, indeterminate);
  if (r.atEnd()) return tail;
  tail.trailers = decodeFields(r, 'trailer section', indeterminate);
  checkPadding(r);
  return tail;
}

export function decodeRequest(bytes: Uint8Array): BhttpRequest {
  const r = new VarReader(bytes, 'binary HTTP request');
  const framing = r.varint('framing indicator');
  if (framing !== KNOWN_REQUEST && framing !== INDETERMINATE_REQUEST) {
    throw new OhttpError('bad-framing', `framing indicator ${framing} is not a binary HTTP request`);
  }
  const method = text(r.lengthPrefixed('method'), 'method');
  const scheme = text(r.lengthPrefixed('scheme'), 'scheme');
  const authority = text(r.lengthPrefixed('authority'), 'authority');
  const path = text(r.lengthPrefixed('path'), 'path');
  if (method.length === 0) throw new OhttpError('bad-message', 'binary HTTP request has an empty method');
  return { method, scheme, authority, path, ...decodeTail(r, framing === INDETERMINATE_REQUEST) };
}

export function decodeResponse(bytes: Uint8Array): BhttpResponse {
  const r = new VarReader(bytes, 'binary HTTP response');
  const framing = r.varint('framing indicator');
  if (framing !== KNOWN_RESPONSE && framing !== INDETERMINATE_RESPONSE) {
    throw new OhttpError('bad-framing', `framing indicator ${framing} is not a binary HTTP response`);
  }
  const indeterminate = framing === INDETERMINATE_RESPONSE;
  const informational: InformationalResponse[] = [];
  for (;;) {
    const status = r.varint('status code');
    if (status >= 100 && status <= 199) {
      informational.push({ status, headers: decodeFields(r, 'informational header section', indeterminate) });
      continue;
    }
    checkStatus(status, false);
    return { informational, status, ...decodeTail(r, indeterminate) };
  }
}
