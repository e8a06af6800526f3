import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// The house plan of docs/design.md, checked on every import in src/: rooms by where the code runs,
// five floors, imports only downward (or sideways without a loop), and the web-standard rooms free of
// Node built-ins outside their Node-only files.

const FLOORS: Record<string, number> = {
  util: 1,
  seal: 2,
  attest: 2,
  ohttp: 2,
  translog: 2,
  policy: 2,
  wire: 2,
  http: 2,
  tee: 3,
  kbs: 4,
  infer: 4,
  client: 4,
  train: 4,
  federated: 4,
  cli: 5,
  ui: 5,
};

/** Rooms whose code runs in browsers as well as Node.js (docs/design.md). */
const WEB_STANDARD = ['util', 'seal', 'attest', 'ohttp', 'translog', 'policy', 'wire', 'client'];

/**
 * The Node-only files inside web-standard rooms: front doors named node.ts and what only they reach.
 * Each is named here on purpose, so that a new one is a decision rather than an accident.
 */
const NODE_ONLY = new Set([
  'src/util/optional/node.ts',
  'src/ohttp/node.ts',
  'src/seal/node.ts',
  'src/seal/worker.ts',
  'src/seal/pool.ts',
  'src/seal/aead-native.ts',
  'src/seal/aead-node.ts',
  'src/attest/collateral/node.ts',
]);

/**
 * The only files another room may import: each room's index.ts (web-standard where the room is), its
 * Node-only node.ts, its testing/ door, and the few light doors below. Everything else is the room's
 * own business.
 */
const DOORS = new Set([
  ...Object.keys(FLOORS).map((room) => `src/${room}/index.ts`),
  'src/seal/node.ts',
  'src/ohttp/node.ts',
  'src/infer/node.ts',
  'src/util/optional/node.ts',
  'src/attest/collateral/node.ts',
  'src/attest/testing/index.ts',
  'src/infer/testing/index.ts',
  // Light doors, cheap to load, for code that needs a room's names without its machinery (the CLI's
  // start-up, evidence collectors naming TEE kinds): attestation's vocabulary without the verifiers,
  // the evidence collectors without the rest of the agent, the agent's default paths for
  // `--help`, the admin API's client without the broker, and the TLS client's fetch without Fastify.
  'src/attest/types.ts',
  'src/tee/evidence/index.ts',
  'src/tee/defaults.ts',
  'src/kbs/admin-client.ts',
  'src/http/client.ts',
  // Receipts (attested DSSE envelopes, training receipts) and the training report, for `cloister
  // receipt` and the broker without the agent or the trainers' engines.
  'src/tee/training-receipt.ts',
  'src/tee/attested-receipt.ts',
  'src/train/report.ts',
]);

/** Doors meant for browsers too: nothing behind them may need Node. */
const WEB_DOORS = [...WEB_STANDARD, 'infer'].map((room) => `src/${room}/index.ts`);

interface Import {
  from: string;
  to: string;
  line: string;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return p.endsWith('.ts') && !p.endsWith('.d.ts') ? [p] : [];
  });
}

const files = sources('src');
const text = new Map(files.map((f) => [f, readFileSync(f, 'utf8')]));

function importsOf(file: string): { relative: Import[]; bare: string[] } {
  const relative: Import[] = [];
  const bare: string[] = [];
  for (const m of (text.get(file) ?? '').matchAll(
    /(?:^|\n)\s*(?:import|export)[^'";]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g,
  )) {
    const spec = m[1] ?? m[2] ?? '';
    if (spec.startsWith('.')) {
      const to = path.join(path.dirname(file), spec).replace(/\.js$/, '.ts');
      relative.push({ from: file, to, line: m[0].trim() });
    } else bare.push(spec);
  }
  return { relative, bare };
}

const roomOf = (file: string) => file.split(path.sep)[1] ?? '';

describe('the house plan (docs/design.md)', () => {
  it('every room under src/ has a floor', () => {
    const rooms = readdirSync('src', { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
    expect(rooms.filter((r) => !(r in FLOORS))).toEqual([]);
  });

  it('every relative import names a file that exists', () => {
    const missing = files.flatMap((f) => importsOf(f).relative.filter((i) => !text.has(i.to)));
    expect(missing).toEqual([]);
  });

  it('imports go down or sideways, never up', () => {
    const up = files.flatMap((f) =>
      importsOf(f).relative.filter((i) => (FLOORS[roomOf(i.to)] ?? 0) > (FLOORS[roomOf(i.from)] ?? 0)),
    );
    expect(up.map((i) => `${i.from} → ${i.to}`)).toEqual([]);
  });

  it('rooms do not import each other in a loop', () => {
    const edges = new Map<string, Set<string>>();
    for (const f of files) {
      for (const i of importsOf(f).relative) {
        const a = roomOf(i.from);
        const b = roomOf(i.to);
        if (a === b) continue;
        if (!edges.has(a)) edges.set(a, new Set());
        edges.get(a)?.add(b);
      }
    }
    const loops: string[] = [];
    const visit = (room: string, trail: string[]) => {
      for (const next of edges.get(room) ?? []) {
        if (trail.includes(next)) loops.push([...trail.slice(trail.indexOf(next)), next].join(' → '));
        else visit(next, [...trail, next]);
      }
    };
    for (const room of edges.keys()) visit(room, [room]);
    expect(loops).toEqual([]);
  });

  it('web-standard rooms reach no Node built-in outside their named Node-only files', () => {
    const offenders: string[] = [];
    for (const f of files) {
      if (!WEB_STANDARD.includes(roomOf(f)) || NODE_ONLY.has(f)) continue;
      const { relative, bare } = importsOf(f);
      for (const b of bare) if (b.startsWith('node:')) offenders.push(`${f} imports ${b}`);
      for (const i of relative) if (NODE_ONLY.has(i.to)) offenders.push(`${f} imports ${i.to}`);
      if (/\bBuffer\.|\bprocess\./.test(text.get(f) ?? '')) offenders.push(`${f} uses Buffer or process`);
    }
    expect(offenders).toEqual([]);
  });

  it('rooms enter each other only through their front doors', () => {
    const side = files.flatMap((f) =>
      importsOf(f).relative.filter((i) => roomOf(i.to) !== roomOf(i.from) && !DOORS.has(i.to)),
    );
    expect(side.map((i) => `${i.from} → ${i.to}`)).toEqual([]);
  });

  it('nothing behind a web-standard front door needs Node', () => {
    const offenders: string[] = [];
    for (const door of WEB_DOORS) {
      if (!text.has(door)) continue;
      const seen = new Set<string>();
      const visit = (f: string) => {
        if (seen.has(f)) return;
        seen.add(f);
        // Type-only imports vanish at run time.
        const source = (text.get(f) ?? '').replace(/(?:^|\n)\s*(?:import|export)\s+type\b[^;]*;/g, '');
        for (const m of source.matchAll(/(?:import|export)[^'";]*?from\s*['"]([^'"]+)['"]/g)) {
          const spec = m[1] ?? '';
          if (spec.startsWith('node:')) offenders.push(`${door}: ${f} imports ${spec}`);
          if (!spec.startsWith('.')) continue;
          const to = path.join(path.dirname(f), spec).replace(/\.js$/, '.ts');
          if (NODE_ONLY.has(to) || ['tee', 'http', 'kbs'].includes(roomOf(to)))
            offenders.push(`${door}: ${f} imports ${to}`);
          visit(to);
        }
      };
      visit(door);
    }
    expect(offenders).toEqual([]);
  });

  it('only servers stand on the HTTP stack', () => {
    const users = new Set(
      files.filter((f) => importsOf(f).relative.some((i) => roomOf(i.to) === 'http')).map(roomOf),
    );
    for (const room of users) expect(['kbs', 'infer', 'tee', 'train', 'cli', 'http']).toContain(room);
  });
});
