import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  canonicalEntryBytes,
  entryLeafHash,
  type LogEntry,
  nextEntry,
  parseEntry,
  ZERO_HASH_HEX,
} from '../../src/translog/entry.js';
import { TranslogError } from '../../src/translog/errors.js';
import { toHex, utf8 } from '../../src/util/bytes.js';

const first: LogEntry = {
  index: 0,
  time: '2026-11-25T21:45:19.123Z',
  kind: 'release',
  tenant: 'acme',
  actor: 'ear:sub=tdx:3f2a',
  subject: 'kbs:///acme/models/llama-key',
  details: { policy: 'default', tee: 'tdx' },
  prevHash: ZERO_HASH_HEX,
};

// The canonical form written out by hand: members sorted, no whitespace.
const CANONICAL =
  '{"actor":"ear:sub=tdx:3f2a","details":{"policy":"default","tee":"tdx"},"index":0,"kind":"release",' +
  `"prevHash":"${ZERO_HASH_HEX}","subject":"kbs:///acme/models/llama-key","tenant":"acme","time":"2026-11-25T21:45:19.123Z"}`;

describe('log entries', () => {
  it('hash as SHA-256(0x00 ‖ JCS(entry)), checked with an independent SHA-256', async () => {
    expect(utf8.decode(canonicalEntryBytes(first))).toBe(CANONICAL);
    const want = createHash('sha256')
      .update(Buffer.from([0]))
      .update(CANONICAL)
      .digest('hex');
    expect(toHex(await entryLeafHash(first))).toBe(want);
  });

  it('nextEntry numbers entries and chains each to the leaf hash of the one before', async () => {
    const a = await nextEntry(null, { ...first });
    expect(a.entry).toEqual(first);
    const b = await nextEntry(
      { index: 0, leafHash: a.leafHash },
      { ...first, kind: 'denial', time: undefined },
    );
    expect(b.entry.index).toBe(1);
    expect(b.entry.prevHash).toBe(toHex(a.leafHash));
    expect(Date.parse(b.entry.time)).toBeGreaterThan(0);
  });

  it('an entry is a copy: changing the caller’s details afterwards changes nothing', async () => {
    const details = { list: [1, 2] };
    const a = await nextEntry(null, { ...first, details });
    details.list.push(3);
    expect(a.entry.details).toEqual({ list: [1, 2] });
  });

  it('refuses malformed entries with bad-entry', () => {
    const bad = (patch: Record<string, unknown>, re: RegExp) => {
      let err: unknown;
      try {
        parseEntry({ ...first, ...patch });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TranslogError);
      expect((err as TranslogError).code).toBe('bad-entry');
      expect((err as TranslogError).message).toMatch(re);
    };
    bad({ index: -1 }, /index/);
    bad({ index: 1.5 }, /index/);
    bad({ time: '2026-11-25 21:45' }, /RFC 3339/);
    bad({ time: '2026-13-45T99:00:00Z' }, /RFC 3339/);
    bad({ kind: 'Release' }, /kind/);
    bad({ tenant: 3 }, /tenant/);
    bad({ details: [] }, /details/);
    bad({ prevHash: 'AB'.repeat(32) }, /prevHash/);
    bad({ extra: true }, /unknown field/);
    bad({ actor: '\uD800' }, /canonicalisable/);
    expect(parseEntry({ ...first, kind: 'custom-kind' }).kind).toBe('custom-kind');
  });
});
