/** A JSON object (not an array, not null): what parsers of JSON messages check before reading fields. */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
