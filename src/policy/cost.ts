import type { ASTNode } from '@marcbachmann/cel-js';
import { COMPREHENSIONS, children } from './ast.js';
import { INPUT_LIMITS } from './input-limits.js';

/**
 * Worst-case cost, in steps, of evaluating a policy on any input within INPUT_LIMITS (cf. cel-go's
 * cost estimator). The estimate follows the size of every value through the tree: a string literal's
 * length is known, a string or collection from the input is bounded by INPUT_LIMITS, `+` adds sizes,
 * `split`, `join`, `map`, `json` … produce values bounded by their operands. Each node evaluated costs
 * NODE steps; work that walks a string costs per character and work that walks a collection per entry
 * (COST_WEIGHTS); a comprehension adds up the cost of its body over the entries of its receiver. The
 * weights are calibrated so that one step takes at most a few nanoseconds on the development machine
 * whatever the operation (test/policy/fuzz.slow.test.ts measures it), so the bound on steps
 * (POLICY_LIMITS.maxCost) is a bound on time. The estimate is an upper bound, not a prediction.
 *
 * Walks are summed, not multiplied out: inside a comprehension, the size of the item in hand is a
 * symbol (Sym), at most the largest item, and sizes and costs that depend on it are linear forms in
 * it (Amount). When the walk closes, the symbol's sum over all iterations is bounded by what the
 * receiver holds in total, so `cpu.claims.l.all(x, x.size() == 96)` costs the characters of all
 * the claims (256 Ki) plus a constant per entry, not 4096 entries × 64 Ki characters. A receiver's
 * total may itself depend on an outer walk's item (`gpus.all(g, g.claims.l.all(…))`), which sums
 * in turn over all GPUs: nested walks over the input share its global budgets. Parts of the input
 * reached by distinct names from `cpu` or `init_data` are regions (Sym) that share their parent's
 * size, so walks over two different claims share the budget too. This is sound only because every
 * bound says how much it holds in total, aliases counted (`allChars`, `allEntries`):
 * the input counts each occurrence of a string against its budget, and a list the policy builds
 * (`[s, s]`, `l.map(x, s)`, `x + x`) counts each copy.
 */

/**
 * An unknown size (characters, or entries), at most `max`. Either the item a comprehension's variable
 * holds in one iteration, summed over the walk at most the receiver's total (Walk), or a region: a
 * part of the input reached by field names from `cpu` or `init_data`, whose parts under distinct
 * names together hold at most it (so walks over `cpu.claims.rtmrs` and `cpu.claims.event_log` share
 * the input's budget; the largest cost over all regions is found when the estimate ends, regionMax).
 */
interface Sym {
  readonly max: number;
  /** Its share of the receiver's total when the receiver is full: picks between two valid bounds. */
  readonly avg: number;
  /** A region's parts by name (a name always denotes the same part). */
  readonly parts?: Map<string, Sym>;
}

/** c + Σ k·s over the symbols of the enclosing walks; every coefficient and symbol is ≥ 0. */
interface Lin {
  readonly c: number;
  readonly k: ReadonlyMap<Sym, number>;
}

/** An upper bound: at most `max`, and at most `lin` whatever the walks' items are. */
interface Amount {
  readonly max: number;
  readonly lin: Lin;
}

const NO_TERMS: ReadonlyMap<Sym, number> = new Map();
const num = (n: number): Amount => ({ max: n, lin: { c: n, k: NO_TERMS } });
const ZERO = num(0);
const linAt = (l: Lin, at: (s: Sym) => number): number => {
  let total = l.c;
  for (const [s, k] of l.k) total += k * at(s);
  return total;
};
/** The largest an amount can be, whatever the walks' items. */
const hi = (a: Amount): number =>
  Math.min(
    a.max,
    linAt(a.lin, (s) => s.max),
  );
/** What a linear form comes to when each item holds its share: used only to choose between bounds. */
const guess = (l: Lin): number => linAt(l, (s) => s.avg);
function linAdd(a: Lin, b: Lin): Lin {
  if (b.k.size === 0) return { c: a.c + b.c, k: a.k };
  const k = new Map(a.k);
  for (const [s, x] of b.k) k.set(s, (k.get(s) ?? 0) + x);
  return { c: a.c + b.c, k };
}
const linScale = (a: Lin, f: number): Lin =>
  f === 0 || (a.c === 0 && a.k.size === 0)
    ? ZERO.lin
    : { c: a.c * f, k: new Map([...a.k].map(([s, x]) => [s, x * f])) };
const add = (...xs: Amount[]): Amount =>
  xs.reduce((t, x) => ({ max: t.max + x.max, lin: linAdd(t.lin, x.lin) }), ZERO);
const scale = (a: Amount, f: number): Amount => ({ max: a.max * f, lin: linScale(a.lin, f) });
/** Both bounds hold: the smaller largest value, and the linear form likely smaller once summed. */
const least = (a: Amount, b: Amount): Amount => ({
  max: Math.min(a.max, b.max),
  lin: guess(a.lin) <= guess(b.lin) ? a.lin : b.lin,
});
/** A bound on either. */
function most(a: Amount, b: Amount): Amount {
  const k = new Map(a.lin.k);
  for (const [s, x] of b.lin.k) k.set(s, Math.max(k.get(s) ?? 0, x));
  return { max: Math.max(a.max, b.max), lin: { c: Math.max(a.lin.c, b.lin.c), k } };
}
/** A product: one factor is taken at its largest (a linear form has no products), the cheaper way. */
function mul(a: Amount, b: Amount): Amount {
  const ha = hi(a);
  const hb = hi(b);
  const x = linScale(a.lin, hb);
  const y = linScale(b.lin, ha);
  return { max: ha * hb, lin: guess(x) <= guess(y) ? x : y };
}

/** What is known about a value: upper bounds on its sizes. */
interface Bound {
  /** Longest it can be as a string or bytes (UTF-16 code units or bytes); at most allChars. */
  readonly chars: Amount;
  /** Most entries it can have as a list or map; at most allEntries. */
  readonly entries: Amount;
  /**
   * Characters in it and in everything inside it, together (map keys included), each copy counted:
   * at least the sum of its items' (or keys') allChars, which a walk over it relies on.
   */
  readonly allChars: Amount;
  /** Entries in it and in everything inside it, together: at least the sum of its items'. */
  readonly allEntries: Amount;
  /** Its elements (list) or values (map); 'self' when they are bounded as it is (JSON of any shape). */
  readonly item?: Bound | 'self';
  /** Its keys, when it may be a map (a comprehension over a map walks its keys). */
  readonly key?: Bound;
  /** The typed fields of an object (a submodule, the resource). */
  readonly fields?: Readonly<Record<string, Bound>>;
  /** A string whose hash the engine already knows: a literal, or a key of a map. */
  readonly hashed?: boolean;
  /**
   * The region this value is, exactly (not a value inside it): set only by a field name from `cpu`,
   * `init_data` or another region, so that two regions with different names never overlap.
   */
  readonly region?: { readonly chars: Sym; readonly entries: Sym };
  /**
   * It has keys but may be a list all the same (`dyn(list)` and `dyn(map)` joined): a comprehension
   * over it may walk its elements as well as its keys.
   */
  readonly mixed?: true;
}

/** Steps per unit of work (see above; measured by test/policy/fuzz.slow.test.ts). */
export const COST_WEIGHTS = Object.freeze({
  /** Evaluating one node, and one iteration of a comprehension. */
  node: 4,
  /** One entry of a list or map copied, compared or walked. */
  entry: 4,
  /** One character walked: size() counts code points, case mapping, split, hashing a fresh string … */
  char: 1,
  /**
   * One character case-mapped (lowerAscii, upperAscii): non-ASCII text goes through full Unicode case
   * mapping, ≈ 10 ns per character ('İ', 'ß').
   */
  caseMap: 2,
  /** One character compared (==, <, startsWith): the engine compares memory, much faster than a walk. */
  compare: 1 / 8,
  /** A timestamp getter with a time zone (`now.getHours("Europe/Paris")`): ≈ 70 µs through Intl. */
  timeZone: 20_000,
  /**
   * An error thrown (cf. throwCosts): the library builds an Error and throws it, and CEL absorbs it
   * (`x.a == 1 || true`) by catching it, ≈ 1 µs whatever the error once the excerpt and stack are
   * skipped (quiet.ts). The attacker picks the item types that make a walk's body fail on every item.
   */
  error: 120,
  /** An error caught and thrown again (`||`, `&&`, a walk): the throw without building it. */
  rethrow: 64,
  /** Each node an error unwinds through on its way to the `||`, `&&` or walk that catches it: ≈ 140 ns. */
  unwind: 16,
});

const NODE = num(COST_WEIGHTS.node);
const ENTRY: number = COST_WEIGHTS.entry;
const CHAR: number = COST_WEIGHTS.char;
const COMPARE: number = COST_WEIGHTS.compare;
const S = INPUT_LIMITS.maxStringLength;
const N = INPUT_LIMITS.maxValues;
const T = INPUT_LIMITS.maxStringChars;
const SUBMODS = INPUT_LIMITS.maxSubmods;

const sized = (
  chars: number,
  entries: number,
  allChars: number,
  allEntries: number,
  more: Partial<Bound> = {},
): Bound => ({
  chars: num(chars),
  entries: num(entries),
  allChars: num(allChars),
  allEntries: num(allEntries),
  ...more,
});
const NOTHING: Bound = Object.freeze(sized(0, 0, 0, 0));
/** Numbers, booleans, timestamps, durations; `string()` of one is at most 32 characters. */
const SCALAR = NOTHING;
const text = (chars: Amount): Bound => ({ chars, entries: ZERO, allChars: chars, allEntries: ZERO });
const str = (chars: number): Bound => text(num(chars));
const key = (chars: number): Bound => ({ ...str(chars), hashed: true });
/** Claims, reasons, init data: JSON of any shape within the input bounds. */
const JSON_INPUT: Bound = Object.freeze(sized(S, N, T, N, { item: 'self', key: key(S) }));
/** `claims`, `init_data`: maps of JSON. */
const JSON_MAP: Bound = Object.freeze({ ...JSON_INPUT, chars: ZERO, item: JSON_INPUT });
/** `reasons`: a list of {check, status, message}, 4 values each. */
const REASONS: Bound = Object.freeze(
  sized(0, N / 4, T, N, { item: sized(0, 3, T, 3, { item: str(S), key: key(8) }) }),
);
const TRUST: Bound = Object.freeze(sized(0, 8, 8 * 32, 8, { item: SCALAR, key: key(32) }));
/**
 * A submodule. Its name, status and kind count against the input's characters (INPUT_LIMITS) with
 * its claims and reasons, so all submodules together hold at most that plus their trust vectors.
 */
const SUBMOD: Bound = Object.freeze(
  sized(0, 0, T + 8 * 32, N + 16, {
    fields: {
      name: str(S),
      status: str(S),
      kind: str(S),
      insecure: SCALAR,
      trust: TRUST,
      claims: JSON_MAP,
      reasons: REASONS,
    },
  }),
);
const ALL_SUBMODS: Bound = Object.freeze(
  sized(0, SUBMODS, T + SUBMODS * 8 * 32, N + SUBMODS * 17, { item: SUBMOD, key: key(S) }),
);
const GPUS: Bound = Object.freeze({ ...ALL_SUBMODS, key: undefined });
const RESOURCE: Bound = Object.freeze(
  sized(0, 0, 4 * S, 4, { fields: { uri: str(S), repository: str(S), type: str(S), tag: str(S) } }),
);
/**
 * `receipts`: at most maxReceipts receipts, each of a fixed shape whose strings are at most
 * maxReceiptString long (their own bounds, not a share of the input's: see INPUT_LIMITS).
 */
const RS = INPUT_LIMITS.maxReceiptString;
const RECEIPT_OUTPUTS_MAX = INPUT_LIMITS.maxReceiptOutputs;
const RECEIPT_OUTPUT: Bound = Object.freeze(
  sized(0, 0, 2 * RS, 2, { fields: { file: str(RS), sha256: str(RS) } }),
);
const RECEIPT: Bound = Object.freeze(
  sized(0, 0, (8 + 2 * RECEIPT_OUTPUTS_MAX) * RS, 10 + 3 * RECEIPT_OUTPUTS_MAX, {
    fields: {
      job: str(RS),
      sha256: str(RS),
      trainer: sized(0, 0, 3 * RS, 3, { fields: { kind: str(RS), name: str(RS), digest: str(RS) } }),
      outputs: sized(0, RECEIPT_OUTPUTS_MAX, 2 * RS * RECEIPT_OUTPUTS_MAX, 3 * RECEIPT_OUTPUTS_MAX, {
        item: RECEIPT_OUTPUT,
      }),
      tee: sized(0, 0, 3 * RS, 4, {
        fields: { kind: str(RS), insecure: SCALAR, status: str(RS), measurement: str(RS) },
      }),
      recorded_at: SCALAR,
    },
  }),
);
const RECEIPTS: Bound = Object.freeze(
  sized(
    0,
    INPUT_LIMITS.maxReceipts,
    INPUT_LIMITS.maxReceipts * hi(RECEIPT.allChars),
    INPUT_LIMITS.maxReceipts * (1 + hi(RECEIPT.allEntries)),
    { item: RECEIPT },
  ),
);
const VARIABLES: Record<string, Bound> = {
  submods: ALL_SUBMODS,
  cpu: SUBMOD,
  gpus: GPUS,
  resource: RESOURCE,
  tenant: str(S),
  tee: str(S),
  init_data: JSON_MAP,
  now: SCALAR,
  dev_mode: SCALAR,
  receipts: RECEIPTS,
};
/** Namespaces that prefix a call (`optional.of(x)`), not values. */
const NAMESPACES = new Set(['optional', 'cel']);

/** A value inside another holds no more than it. */
function part(child: Bound, parent: Bound): Bound {
  if (child === parent) return child;
  return {
    ...child,
    chars: least(child.chars, parent.allChars),
    entries: least(child.entries, parent.allEntries),
    allChars: least(child.allChars, parent.allChars),
    allEntries: least(child.allEntries, parent.allEntries),
  };
}

const itemOf = (b: Bound): Bound => (b.item === 'self' ? b : (b.item ?? NOTHING));

/** An entry of a list or map: one of its values; of anything else not known here, anything. */
const member = (b: Bound): Bound => (b.item !== undefined ? plain(part(itemOf(b), b)) : JSON_INPUT);

/**
 * The same bound, no longer a region: for a value reached otherwise than by name (an element, a
 * dynamic key, a walk's item), which may be any part of the region, so its fields are not parts of
 * the region under their names.
 */
function plain(b: Bound): Bound {
  if (b.region === undefined) return b;
  const { region: _, ...rest } = b;
  return rest;
}

/** The part of a region under a name, as a region of its own. */
function regionPart(child: Bound, parent: { chars: Sym; entries: Sym }, name: string): Bound {
  const sub = (p: Sym, top: number): Sym => {
    const parts = p.parts ?? new Map<string, Sym>();
    let s = parts.get(name);
    if (s === undefined) {
      const max = Math.min(top, p.max);
      s = { max, avg: max, parts: new Map() };
      parts.set(name, s);
    }
    return s;
  };
  const chars = sub(parent.chars, hi(child.allChars));
  const entries = sub(parent.entries, hi(child.allEntries));
  const own = (s: Sym, top: Amount): Amount => ({ max: hi(top), lin: { c: 0, k: new Map([[s, 1]]) } });
  return {
    ...child,
    chars: own(chars, child.chars),
    allChars: own(chars, child.allChars),
    entries: own(entries, child.entries),
    allEntries: own(entries, child.allEntries),
    region: { chars, entries },
  };
}

/** A field: a typed one, or an entry of a map. */
function field(b: Bound, name: string): Bound {
  const typed = b.fields?.[name];
  const child = typed !== undefined ? part(typed, b) : member(b);
  return b.region !== undefined ? regionPart(child, b.region, name) : child;
}

/** The least bound that holds both. */
function lub(a: Bound, b: Bound): Bound {
  if (a === b || b === NOTHING) return a;
  if (a === NOTHING) return b;
  const item =
    a.item === 'self' && b.item === 'self'
      ? 'self'
      : a.item === undefined && b.item === undefined
        ? undefined
        : lub(itemOf(a), itemOf(b));
  const keys =
    a.key === undefined && b.key === undefined ? undefined : lub(a.key ?? NOTHING, b.key ?? NOTHING);
  // One side a list (items, no keys) or JSON of any shape, the result with keys: it may be either.
  const mayBeList = (x: Bound) => x.item !== undefined && (x.key === undefined || x.item === 'self');
  const mixed = keys !== undefined && item !== 'self' && (a.mixed || b.mixed || mayBeList(a) || mayBeList(b));
  return {
    chars: most(a.chars, b.chars),
    entries: most(a.entries, b.entries),
    allChars: most(a.allChars, b.allChars),
    allEntries: most(a.allEntries, b.allEntries),
    ...(item !== undefined ? { item } : {}),
    ...(keys !== undefined ? { key: keys } : {}),
    ...(a.fields !== undefined && a.fields === b.fields ? { fields: a.fields } : {}),
    ...(a.hashed === true && b.hashed === true ? { hashed: true } : {}),
    ...(mixed ? { mixed: true as const } : {}),
  };
}

/** Comparing two values for equality walks the smaller. */
const equality = (a: Bound, b: Bound): Amount =>
  add(scale(least(a.allChars, b.allChars), COMPARE), scale(least(a.allEntries, b.allEntries), ENTRY));

/** A comprehension being estimated: the symbols of its item and what its receiver holds. */
interface Walk {
  readonly chars: Sym;
  readonly entries: Sym;
  readonly count: Amount;
  readonly totalChars: Amount;
  readonly totalEntries: Amount;
}

/** The variable of a walk over `receiver` whose items are each within `each`. */
function startWalk(each: Bound, receiver: Bound): { walk: Walk; variable: Bound } {
  const n = Math.max(1, hi(receiver.entries));
  const sym = (top: number, total: Amount): Sym => ({ max: top, avg: Math.min(top, hi(total) / n) });
  const walk: Walk = {
    chars: sym(hi(each.allChars), receiver.allChars),
    entries: sym(hi(each.allEntries), receiver.allEntries),
    count: receiver.entries,
    totalChars: receiver.allChars,
    totalEntries: receiver.allEntries,
  };
  // The item holds at most its symbols (and each part of it as much, through part()).
  const own = (s: Sym, top: Amount): Amount => ({
    max: hi(top),
    lin: { c: 0, k: new Map([[s, 1]]) },
  });
  const variable: Bound = {
    ...each,
    chars: own(walk.chars, least(each.chars, each.allChars)),
    entries: own(walk.entries, least(each.entries, each.allEntries)),
    allChars: own(walk.chars, each.allChars),
    allEntries: own(walk.entries, each.allEntries),
  };
  return { walk, variable };
}

/** An amount summed over every iteration of a walk, in terms of the outer walks only. */
function sumOver(a: Amount, w: Walk): Amount {
  const kc = a.lin.k.get(w.chars) ?? 0;
  const ke = a.lin.k.get(w.entries) ?? 0;
  const rest = new Map(a.lin.k);
  rest.delete(w.chars);
  rest.delete(w.entries);
  const fixed: Lin = { c: a.lin.c, k: rest };
  // What does not depend on the item is paid on every iteration; what does, at most the total.
  const total = (k: number, sum: Amount, s: Sym) => linScale(least(sum, scale(w.count, s.max)).lin, k);
  const lin = linAdd(
    mul(w.count, { max: linAt(fixed, (s) => s.max), lin: fixed }).lin,
    linAdd(total(kc, w.totalChars, w.chars), total(ke, w.totalEntries, w.entries)),
  );
  return { max: hi(w.count) * hi(a), lin };
}

/** A bound that no longer depends on the walk's item: each symbol at its largest. */
function settle(b: Bound, w: Walk): Bound {
  const amount = (a: Amount): Amount => {
    if (!a.lin.k.has(w.chars) && !a.lin.k.has(w.entries)) return a;
    const k = new Map(a.lin.k);
    const c = a.lin.c + (k.get(w.chars) ?? 0) * w.chars.max + (k.get(w.entries) ?? 0) * w.entries.max;
    k.delete(w.chars);
    k.delete(w.entries);
    return { max: a.max, lin: { c, k } };
  };
  const fields = b.fields;
  return {
    ...b,
    chars: amount(b.chars),
    entries: amount(b.entries),
    allChars: amount(b.allChars),
    allEntries: amount(b.allEntries),
    ...(b.item !== undefined && b.item !== 'self' ? { item: settle(b.item, w) } : {}),
    ...(b.key !== undefined ? { key: settle(b.key, w) } : {}),
    ...(fields !== undefined
      ? { fields: Object.fromEntries(Object.entries(fields).map(([n, f]) => [n, settle(f, w)])) }
      : {}),
  };
}

/** What a function call costs beyond its operands, and what it returns. */
type Call = (subject: Bound, args: Bound[]) => { own: Amount; result: Bound };

const scalar = (own: Amount): { own: Amount; result: Bound } => ({ own, result: SCALAR });
const chars = (b: Bound, f = 1): Amount => scale(b.chars, f * CHAR);
/** size() of a string counts code points; of a map, the library lists its keys. */
const walk: Call = (s) => scalar(add(chars(s), scale(s.entries, ENTRY)));
const getter: Call = (_s, args) => scalar(num(args.length > 0 ? COST_WEIGHTS.timeZone : 0));
/** A string made by walking the subject: costs `weight` per character, is `f` times as long. */
const remade =
  (f: number, weight = 1): Call =>
  (s) => ({ own: chars(s, weight), result: text(scale(s.chars, f)) });
const compared: Call = (s, [p = NOTHING]) => scalar(scale(least(s.chars, p.chars), COMPARE));
const searched: Call = (s, [p = NOTHING]) => scalar(add(chars(s), chars(p)));

/**
 * Every function and method of the policy environment (a test checks the list against the library's).
 * `duration()` is only allowed on a short literal (compile.ts): the library parses it with a regular
 * expression that takes cubic time on a long run of digits.
 */
const CALLS: Record<string, Call> = {
  size: walk,
  int: walk,
  uint: walk,
  double: walk,
  bool: walk,
  string: (s) => ({ own: chars(s), result: text(most(num(32), s.chars)) }),
  // UTF-8 takes up to 3 bytes per UTF-16 code unit.
  bytes: remade(3),
  dyn: (s) => ({ own: ZERO, result: s }),
  type: () => scalar(ZERO),
  // The library refuses strings outside 20..30 characters before parsing.
  timestamp: () => scalar(num(30 * CHAR)),
  duration: (s) => scalar(chars(s)),
  has: () => scalar(ZERO),
  startsWith: compared,
  endsWith: compared,
  contains: searched,
  indexOf: searched,
  // V8 searches backwards naively, comparing the pattern at every position (a 64 Ki-character claim
  // and a 1 KiB literal: ≈ 20 ms), unlike indexOf's linear-time search.
  lastIndexOf: (s, [p = NOTHING]) => {
    const searching = searched(s, [p]);
    return scalar(add(searching.own, scale(mul(s.chars, p.chars), COMPARE)));
  },
  // Full Unicode case mapping may lengthen a string (ß → SS): up to 3 code units for 1.
  lowerAscii: remade(3, COST_WEIGHTS.caseMap),
  upperAscii: remade(3, COST_WEIGHTS.caseMap),
  trim: remade(1),
  substring: remade(1),
  split: (s) => {
    // split("") makes one entry per character; the parts hold the string's characters between them.
    const entries = add(s.chars, num(1));
    const parts: Bound = {
      chars: ZERO,
      entries,
      allChars: s.chars,
      allEntries: entries,
      item: text(s.chars),
    };
    return { own: add(chars(s), scale(entries, ENTRY)), result: parts };
  },
  join: (s, [sep = NOTHING]) => {
    const joined = add(s.allChars, mul(s.entries, sep.chars));
    return { own: add(scale(joined, CHAR), scale(s.entries, ENTRY)), result: text(joined) };
  },
  // bytes.json(): a value of any shape with at most one entry and one character per byte.
  json: (s) => ({
    own: scale(s.chars, CHAR + ENTRY),
    result: {
      chars: s.chars,
      entries: s.chars,
      allChars: s.chars,
      allEntries: s.chars,
      item: 'self',
      key: { ...text(s.chars), hashed: true },
    },
  }),
  hex: remade(2),
  base64: remade(2),
  at: () => scalar(ZERO),
  // Optional values are bounded by what they hold.
  of: (_s, [v = NOTHING]) => ({ own: ZERO, result: v }),
  ofNonZeroValue: (_s, [v = NOTHING]) => ({ own: equality(v, v), result: v }),
  none: () => ({ own: ZERO, result: NOTHING }),
  hasValue: () => scalar(ZERO),
  value: (s) => ({ own: ZERO, result: s }),
  orValue: (s, [v = NOTHING]) => ({ own: ZERO, result: lub(s, v) }),
  or: (s, [v = NOTHING]) => ({ own: ZERO, result: lub(s, v) }),
  getDate: getter,
  getDayOfMonth: getter,
  getDayOfWeek: getter,
  getDayOfYear: getter,
  getFullYear: getter,
  getHours: getter,
  getMilliseconds: getter,
  getMinutes: getter,
  getMonth: getter,
  getSeconds: getter,
};

/** The functions the estimator knows; any other makes a policy's cost unbounded. */
export const KNOWN_FUNCTIONS: ReadonlySet<string> = new Set([...Object.keys(CALLS), ...COMPREHENSIONS]);

type Scope = ReadonlyMap<string, Bound>;
type Estimate = { cost: Amount; bound: Bound };

/**
 * The worst-case cost of a policy, in steps (see above); Infinity when it calls an unknown function.
 * With `errors`, each node that may raise a CEL error is also charged for raising it (throwCosts) at
 * every evaluation: the attacker shapes the items a walk reads, so it may fail on each of them. That
 * estimate is not a refusal (it would refuse realistic appraisal policies, whose typed comparisons
 * fail on an item of another type) but says where a policy is evaluated (src/kbs/policy-pool.ts). It
 * also charges the library's runtime type inspection of operands of unknown type (`inspected`).
 */
export function estimateCost(root: ASTNode, o: { errors?: boolean } = {}): number {
  // `cpu` and `init_data` are disjoint parts of the input (`submods`, `gpus`, `tee` reach the same
  // submodules by other paths, so they are not regions: their bounds are plain numbers).
  const input = {
    chars: { max: T + 8 * 32, avg: T + 8 * 32, parts: new Map<string, Sym>() },
    entries: { max: N + 16, avg: N + 16, parts: new Map<string, Sym>() },
  };
  const variables: Record<string, Bound> = {
    ...VARIABLES,
    cpu: regionPart(SUBMOD, input, 'cpu'),
    init_data: regionPart(JSON_MAP, input, 'init_data'),
  };
  let unbounded = false;
  const unknown = (): Estimate => {
    unbounded = true;
    return { cost: ZERO, bound: JSON_INPUT };
  };
  // A map lookup hashes its key, unless the engine already knows the hash (it keeps it in the string).
  const hash = (k: Bound): Amount => (k.hashed === true ? ZERO : chars(k));
  const throwing = o.errors === true ? throwCosts(root) : new Map<ASTNode, number>();
  // Every node's cost, with what the errors it may throw cost (paid at each of its evaluations).
  const estimate = (node: ASTNode, scope: Scope): Estimate => {
    const e = estimateNode(node, scope);
    const t = throwing.get(node);
    return t === undefined ? e : { cost: add(e.cost, num(t)), bound: e.bound };
  };
  const estimateNode = (node: ASTNode, scope: Scope): Estimate => {
    const all = (nodes: ASTNode[]) => nodes.map((n) => estimate(n, scope));
    // An operator or function applied to an operand of unknown type (dyn) first asks the library for
    // the operand's runtime type, which descends through first entries and takes the first key of
    // each map with `for…in`: that lists every key of a map (the input's maps are dictionaries), so
    // `m < 1`, `m == x` or `size(m)` on a map of 4000 keys costs ≈ 50 µs, error or not. Charged, like
    // errors, only where it decides where a policy runs: a typed comparison with a claim inside a walk
    // (`r != cpu.claims.mr_td`) would otherwise be refused, as the claim may be a map sharing the
    // input's budget with the list walked (items × keys, bounded here as the larger at its largest).
    const inspected = (operands: ASTNode[], xs: Estimate[]): Amount =>
      o.errors === true
        ? add(...xs.map((x, i) => (loose(operands[i]) ? scale(x.bound.allEntries, ENTRY) : ZERO)))
        : ZERO;
    const sum = (xs: { cost: Amount }[], ...more: Amount[]) => add(NODE, ...xs.map((x) => x.cost), ...more);
    switch (node.op) {
      case 'value': {
        const v: unknown = node.args;
        return {
          cost: NODE,
          bound: typeof v === 'string' || v instanceof Uint8Array ? key(v.length) : SCALAR,
        };
      }
      case 'id':
        return { cost: NODE, bound: scope.get(node.args) ?? variables[node.args] ?? JSON_INPUT };
      case '.':
      case '.?': {
        const [obj, name] = node.args;
        const o = estimate(obj, scope);
        return { cost: add(o.cost, NODE), bound: field(o.bound, name) };
      }
      case '[]':
      case '[?]': {
        const [o, k] = all(node.args);
        // A literal name is a field (`init_data.data["cdh.toml"]`); any other key, any entry.
        const name: unknown = node.args[1].op === 'value' ? node.args[1].args : undefined;
        const bound = typeof name === 'string' ? field(o!.bound, name) : member(o!.bound);
        return { cost: sum([o!, k!], hash(k!.bound)), bound };
      }
      case 'list': {
        const items = all(node.args);
        const bound: Bound = {
          chars: ZERO,
          entries: num(items.length),
          allChars: add(...items.map((x) => x.bound.allChars)),
          allEntries: add(...items.map((x) => add(num(1), x.bound.allEntries))),
          item: items.reduce((b, x) => lub(b, x.bound), NOTHING),
        };
        return { cost: sum(items, num(items.length * ENTRY)), bound };
      }
      case 'map': {
        const pairs = node.args.map(([k, v]) => [estimate(k, scope), estimate(v, scope)] as const);
        const flat = pairs.flat();
        const bound: Bound = {
          chars: ZERO,
          entries: num(pairs.length),
          allChars: add(...flat.map((x) => x.bound.allChars)),
          allEntries: add(...pairs.map(([k, v]) => add(num(1), k.bound.allEntries, v.bound.allEntries))),
          item: pairs.reduce((b, [, v]) => lub(b, v.bound), NOTHING),
          key: pairs.reduce((b, [k]) => lub(b, k.bound), NOTHING),
        };
        return { cost: sum(flat, ...pairs.map(([k]) => add(num(ENTRY), hash(k.bound)))), bound };
      }
      case '!_':
      case '-_': {
        const x = estimate(node.args, scope);
        return { cost: add(x.cost, NODE, inspected([node.args], [x])), bound: SCALAR };
      }
      case '&&':
      case '||':
        return { cost: sum(all(node.args)), bound: SCALAR };
      case '-':
      case '*':
      case '/':
      case '%': {
        const xs = all(node.args);
        return { cost: sum(xs, inspected(node.args, xs)), bound: SCALAR };
      }
      case '?:': {
        const [c, a, b] = all(node.args);
        return { cost: sum([c!, a!, b!]), bound: lub(a!.bound, b!.bound) };
      }
      case '==':
      case '!=': {
        const [a, b] = all(node.args);
        return {
          cost: sum([a!, b!], equality(a!.bound, b!.bound), inspected(node.args, [a!, b!])),
          bound: SCALAR,
        };
      }
      case '<':
      case '<=':
      case '>':
      case '>=': {
        const [a, b] = all(node.args);
        return {
          cost: sum(
            [a!, b!],
            scale(least(a!.bound.chars, b!.bound.chars), COMPARE),
            inspected(node.args, [a!, b!]),
          ),
          bound: SCALAR,
        };
      }
      case 'in': {
        const [a, l] = all(node.args);
        const x = a!.bound;
        const c = l!.bound;
        // In a list: each entry is compared with x, and the comparisons together walk at most the list
        // (or entries × x). In a map (c has keys): x is hashed. Whichever the right side may be.
        const inList = add(
          scale(c.entries, ENTRY),
          scale(least(mul(c.entries, x.allChars), c.allChars), COMPARE),
          scale(least(mul(c.entries, x.allEntries), c.allEntries), ENTRY),
        );
        const inMap = c.key !== undefined ? hash(x) : ZERO;
        return { cost: sum([a!, l!], inList, inMap, inspected(node.args, [a!, l!])), bound: SCALAR };
      }
      case '+': {
        const [a, b] = all(node.args);
        const x = a!.bound;
        const y = b!.bound;
        const bound: Bound = {
          chars: add(x.chars, y.chars),
          entries: add(x.entries, y.entries),
          allChars: add(x.allChars, y.allChars),
          allEntries: add(x.allEntries, y.allEntries),
          ...(x.item !== undefined || y.item !== undefined ? { item: lub(itemOf(x), itemOf(y)) } : {}),
        };
        // Strings are joined lazily and flattened by whoever reads them; count the copy here.
        return {
          cost: sum([a!, b!], chars(bound), scale(bound.entries, ENTRY), inspected(node.args, [a!, b!])),
          bound,
        };
      }
      case 'call':
      case 'rcall': {
        const name = node.args[0];
        const receiver = node.op === 'rcall' ? node.args[1] : undefined;
        const args = node.op === 'rcall' ? node.args[2] : node.args[1];
        if (receiver !== undefined && COMPREHENSIONS.has(name))
          return comprehension(name, receiver, args, scope);
        const call = CALLS[name];
        if (call === undefined) return unknown();
        // In call form (`size(x)`) the subject is the first argument; `optional.of(x)` has none.
        const namespace = receiver?.op === 'id' && NAMESPACES.has(receiver.args) && !scope.has(receiver.args);
        const operands = receiver === undefined || namespace ? args : [receiver, ...args];
        const evaluated = all(operands);
        const bounds = evaluated.map((x) => x.bound);
        const [subject, rest] = namespace ? [NOTHING, bounds] : [bounds[0] ?? NOTHING, bounds.slice(1)];
        const { own, result } = call(subject, rest);
        return { cost: sum(evaluated, own, inspected(operands, evaluated)), bound: result };
      }
      default:
        // Every operator the parser makes is handled above; an unknown one cannot be bounded.
        return unknown();
    }
  };

  const comprehension = (
    name: string,
    receiver: ASTNode,
    [variable, ...body]: ASTNode[],
    scope: Scope,
  ): Estimate => {
    const r = estimate(receiver, scope);
    const c = r.bound;
    // Over a list the variable is an element, over a map a key; JSON from the input may be either, and
    // so may a list and a map joined (`cond ? dyn(list) : dyn(map)`).
    const keys = c.key !== undefined ? part(c.key, c) : undefined;
    const each = plain(
      c.item === 'self' ? c : keys === undefined ? member(c) : c.mixed ? lub(keys, member(c)) : keys,
    );
    const { walk, variable: item } = startWalk(each, c);
    const inner = new Map(scope);
    if (variable?.op === 'id') inner.set(variable.args, item);
    const parts = body.map((b) => estimate(b, inner));
    const perIteration = add(NODE, ...parts.map((p) => p.cost));
    const cost = add(NODE, r.cost, sumOver(perIteration, walk));
    let bound: Bound = SCALAR;
    if (name === 'filter') {
      // Some of the receiver's entries (of a map, its keys).
      bound = {
        chars: ZERO,
        entries: c.entries,
        allChars: least(c.allChars, mul(c.entries, each.allChars)),
        allEntries: least(c.allEntries, mul(c.entries, add(num(1), each.allEntries))),
        item: each,
      };
    } else if (name === 'map') {
      const made = parts[parts.length - 1]?.bound ?? NOTHING;
      bound = {
        chars: ZERO,
        entries: c.entries,
        allChars: sumOver(made.allChars, walk),
        allEntries: sumOver(add(num(1), made.allEntries), walk),
        item: settle(made, walk),
      };
    }
    return { cost, bound };
  };

  const total = estimate(root, new Map()).cost;
  return unbounded ? Number.POSITIVE_INFINITY : Math.ceil(Math.min(total.max, regionMax(total.lin, input)));
}

/** The type the library's checker gave a node (it annotates the tree it checked). */
function checked(
  node: ASTNode | undefined,
): { name?: string; kind?: string; hasDynType?: boolean } | undefined {
  return (node as { checkedType?: { name?: string; kind?: string; hasDynType?: boolean } } | undefined)
    ?.checkedType;
}
/** Its type is not known before evaluation (dyn, or a list or map of dyn): an operation on it may fail. */
const loose = (n: ASTNode | undefined): boolean => checked(n)?.hasDynType !== false;
/** It may be a value of any kind. */
const anyKind = (n: ASTNode | undefined): boolean => {
  const t = checked(n);
  return t === undefined || t.kind === 'dyn';
};
const isDouble = (n: ASTNode | undefined): boolean => checked(n)?.name === 'double';

/**
 * Functions that cannot fail on operands of the types they are declared for (with their usual number
 * of arguments); on an operand of unknown type the library may find no overload (one throw). Any other
 * function may also fail in its handler (int("x"), substring(), timestamp(), a time zone …), which the
 * library catches and throws again with the node (two throws).
 */
const TOTAL_FUNCTIONS = new Set([
  'size',
  'startsWith',
  'endsWith',
  'contains',
  'lowerAscii',
  'upperAscii',
  'trim',
  'split',
  'join',
  'string',
  'bytes',
  'of',
  'ofNonZeroValue',
  'none',
  'hasValue',
  'or',
  'orValue',
]);
/** Functions that never fail, whatever their operand. */
const NEVER_FAIL = new Set(['dyn', 'type', 'has']);

/** How many errors a node may throw itself per evaluation (errors of its operands are theirs). */
function ownThrows(node: ASTNode): number {
  const a = node.args as unknown;
  const operand = (i: number): ASTNode | undefined => (Array.isArray(a) ? (a[i] as ASTNode) : undefined);
  switch (node.op) {
    case 'value':
    case 'id':
    case 'list':
    case '==':
    case '!=':
      // Values of different kinds are unequal, not an error.
      return 0;
    case '.':
      // A typed object has its fields; a map may lack the key, anything else has no fields.
      return checked(node.args[0])?.kind === 'message' ? 0 : 1;
    case '.?':
    case '[?]':
      return anyKind(node.args[0]) || (node.op === '[?]' && loose(node.args[1])) ? 1 : 0;
    case '[]':
      // Index out of range, no such key.
      return 1;
    case 'in':
      // In a list is an equality per entry; in a map (or a value of unknown kind) a lookup that fails
      // on a key of the wrong kind.
      return checked(node.args[1])?.kind === 'list' && !anyKind(node.args[1]) ? 0 : 1;
    case '<':
    case '<=':
    case '>':
    case '>=':
      return loose(node.args[0]) || loose(node.args[1]) ? 1 : 0;
    case '+': {
      // Strings, bytes and lists of known types are joined; integers may overflow.
      const [x, y] = node.args;
      const joined = (n: ASTNode) =>
        !loose(n) &&
        (checked(n)?.name === 'string' || checked(n)?.name === 'bytes' || checked(n)?.kind === 'list');
      return (isDouble(x) && isDouble(y)) || (joined(x) && joined(y)) ? 0 : 1;
    }
    case '-':
    case '*':
    case '/':
    case '%':
      // Integers overflow or divide by zero; doubles do neither.
      return isDouble(operand(0)) && isDouble(operand(1)) ? 0 : 1;
    case '-_':
      return isDouble(node.args) ? 0 : 1;
    case '!_':
      return loose(node.args) ? 1 : 0;
    case '&&':
    case '||':
      return loose(node.args[0]) || loose(node.args[1]) ? 1 : 0;
    case '?:':
      return loose(node.args[0]) ? 1 : 0;
    case 'map':
      // Keys of unknown kind may be invalid or repeated.
      return node.args.some(([k]) => loose(k)) ? 1 : 0;
    case 'call':
    case 'rcall': {
      const name = node.args[0];
      const receiver = node.op === 'rcall' ? node.args[1] : undefined;
      const args = node.op === 'rcall' ? node.args[2] : node.args[1];
      if (receiver !== undefined && COMPREHENSIONS.has(name)) {
        // Not a list or map; a predicate that is not a bool.
        const [, ...body] = args;
        const predicate = name === 'map' || name === 'filter' ? [] : body.slice(-1);
        return anyKind(receiver) || predicate.some(loose) ? 1 : 0;
      }
      if (NEVER_FAIL.has(name)) return 0;
      const namespace = receiver?.op === 'id' && NAMESPACES.has(receiver.args);
      const operands = receiver === undefined || namespace ? args : [receiver, ...args];
      // size() of any list, map or string; the others need their operands' types.
      const typed = name === 'size' ? !operands.some(anyKind) : !operands.some(loose);
      if (TOTAL_FUNCTIONS.has(name) || (name.startsWith('get') && args.length === 0)) return typed ? 0 : 1;
      return 2;
    }
    default:
      return 2;
  }
}

/**
 * What the errors each node may throw cost, per evaluation of it. CEL's `&&`, `||` and the walks
 * (all, exists, exists_one, map, filter) catch their operands' errors, to absorb them when the other
 * side decides, and throw one again when it does not; an error unwinds through the nodes between
 * the one that throws it and the one that catches it (our evaluation catches the root's).
 */
function throwCosts(root: ASTNode): Map<ASTNode, number> {
  const costs = new Map<ASTNode, number>();
  /** Visits a node `depth` nodes below the one that catches its errors; whether it may throw. */
  const visit = (node: ASTNode, depth: number): boolean => {
    const comprehension = node.op === 'rcall' && COMPREHENSIONS.has(node.args[0]) ? node.args : undefined;
    const catches = node.op === '&&' || node.op === '||';
    // `e || true` and `e && false` absorb every error of e.
    const decided = catches && node.args.some((o) => o.op === 'value' && o.args === (node.op === '||'));
    let below = false;
    if (comprehension !== undefined) {
      // The receiver is evaluated outside the walk's catch; the body inside it (the variable is a name).
      const [, receiver, [, ...body]] = comprehension;
      below = visit(receiver, depth + 1);
      for (const b of body) below = visit(b, 1) || below;
    } else {
      for (const c of children(node)) below = visit(c, catches ? 1 : depth + 1) || below;
    }
    const own = ownThrows(node);
    // A catcher throws one error again, or its own; anything else passes its operands' errors on.
    const thrown =
      own * COST_WEIGHTS.error +
      ((comprehension !== undefined || catches) && below && own === 0 && !decided ? COST_WEIGHTS.rethrow : 0);
    const throws = own > 0 ? own : thrown > 0 ? 1 : 0;
    if (throws > 0) costs.set(node, thrown + throws * COST_WEIGHTS.unwind * depth);
    return below || own > 0;
  };
  visit(root, 1);
  return costs;
}

/**
 * The largest a linear form can be when its symbols are regions of the input: each at most its
 * `max`, and the parts of a region together at most the region. The best use of a region's size is
 * a concave function of it, made of segments (the cost per unit, and how many units): the parts'
 * segments, best first, each unit also paying the region's own coefficient, then the region's own.
 * Any other symbol left (none should be) is taken at its largest.
 */
function regionMax(lin: Lin, input: { chars: Sym; entries: Sym }): number {
  const involved = new Set<Sym>();
  const mark = (r: Sym): boolean => {
    let any = lin.k.has(r);
    for (const p of r.parts?.values() ?? []) any = mark(p) || any;
    if (any) involved.add(r);
    return any;
  };
  const segments = (r: Sym): [number, number][] => {
    const own = lin.k.get(r) ?? 0;
    const parts = [...(r.parts?.values() ?? [])]
      .filter((p) => involved.has(p))
      .flatMap(segments)
      .sort((a, b) => b[0] - a[0]);
    const out: [number, number][] = [];
    let room = r.max;
    for (const [perUnit, units] of parts) {
      if (room <= 0) break;
      const n = Math.min(units, room);
      out.push([perUnit + own, n]);
      room -= n;
    }
    if (room > 0 && own > 0) out.push([own, room]);
    return out;
  };
  let total = lin.c;
  const roots = [input.chars, input.entries];
  for (const r of roots) if (mark(r)) for (const [perUnit, units] of segments(r)) total += perUnit * units;
  for (const [s, k] of lin.k) if (!involved.has(s)) total += k * s.max;
  return total;
}
