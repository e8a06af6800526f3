/**
 * RFC 8785 JSON Canonicalization Scheme (JCS). Signatures over JSON (sample evidence, key-broker
 * messages) are computed over this form so that two parties serialising the same value produce the
 * same bytes: no whitespace, object members sorted by their names as UTF-16 code units, numbers in the
 * ECMAScript `Number.prototype.toString` form, strings in the minimal JSON escaping.
 */

/** A JSON value as JCS accepts it (I-JSON: finite numbers, no lone surrogates). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** The canonical text of `value`; throws TypeError for values JCS cannot represent. */
export function canonicalize(value: unknown): string {
  return serialize(value, '$');
}

/** The canonical UTF-8 bytes of `value`: what gets hashed or signed. */
export function canonicalizeBytes(value: unknown): Uint8Array {
  return new TextEncoder().encode(canonicalize(value));
}

function serialize(value: unknown, path: string): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value))
        throw new TypeError(`JCS: ${path} is ${value}, which JSON cannot represent`);
      // ECMAScript's Number-to-String is exactly RFC 8785 §3.2.2.3, except that -0 must be "0"
      // (String(-0) is already "0").
      return String(value);
    case 'string':
      return serializeString(value, path);
    case 'object': {
      if (Array.isArray(value)) {
        return `[${value.map((v, i) => serialize(v, `${path}[${i}]`)).join(',')}]`;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        throw new TypeError(`JCS: ${path} is a ${proto?.constructor?.name ?? 'non-plain'} object, not JSON`);
      }
      const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
      // Default sort compares UTF-16 code units, which is what §3.2.3 asks for.
      entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      const members = entries.map(
        ([k, v]) => `${serializeString(k, `${path} key`)}:${serialize(v, `${path}.${k}`)}`,
      );
      return `{${members.join(',')}}`;
    }
    default:
      throw new TypeError(`JCS: ${path} is a ${typeof value}, not a JSON value`);
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function serializeString(s: string, path: string): string {
  if (LONE_SURROGATE.test(s)) throw new TypeError(`JCS: ${path} contains a lone UTF-16 surrogate`);
  // JSON.stringify of a well-formed string uses exactly the escapes of RFC 8785 §3.2.2.2: the short
  // forms \b \t \n \f \r \" \\, \u00xx (lower-case hex) for other controls, and nothing else.
  return JSON.stringify(s);
}
