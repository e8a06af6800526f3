import type { ASTNode } from '@marcbachmann/cel-js';
import { COMPREHENSIONS } from './ast.js';
import { INPUT_LIMITS } from './input-limits.js';

/**
 * Worst-case cost, in steps, of evaluating a policy on any input within INPUT_LIMITS (cf. cel-go's
 * cost estimator). The estimate follows the size of every value through the tree: a string literal's
 * length is known, a string or collection from the input is bounded by INPUT_LIMITS, `+` adds sizes,
 * `split`, `join`, `map`, `json` … produce values bounded by their operands. Each node evaluated costs
 * NODE steps; work that walks a string costs per character and work that walks a collection per entry
 * (COST_WEIGHTS); a comprehension multiplies the cost of its body by the most entries its receiver can
 * have. The weights are calibrated so that one step takes at most a few nanoseconds on the development
 * machine whatever the operation (test/policy/cost.slow.test.ts measures it), so the bound on steps
 * (POLICY_LIMITS.maxCost) is a bound on time. The estimate is an upper bound, not a prediction.
 */

/** What is known about a value: upper bounds on its sizes. */
interface Bound {
  /** Longest it can be as a string or bytes (UTF-16 code units or bytes). */
  readonly chars: number;
  /** Most entries it can have as a list or map. */
  readonly entries: number;
  /** Characters in it and in everything inside it, together (map keys included). */
  readonly allChars: number;
  /** Entries in it and in everything inside it, together. */
  readonly allEntries: number;
  /** Its elements (list) or values (map); 'self' when they are bounded as it is (JSON of any shape). */
  readonly item?: Bound | 'self';
  /** Its keys, when it may be a map (a comprehension over a map walks its keys). */
  readonly key?: Bound;
  /** A string whose hash the engine already knows: a literal, or a key of a map. */
  readonly hashed?: boolean;
  /**
   * It has keys but may be a list all the same (`dyn(list)` and `dyn(map)` joined): a comprehension
   * over it may walk its elements as well as its keys.
   */
  readonly mixed?: true;
}

/** Steps per unit of work (see above; measured by test/policy/cost.slow.test.ts). */
export const COST_WEIGHTS = Object.freeze({
  /** Evaluating one node, and one iteration of a comprehension. */
  node: 4,
  /** One entry of a list or map copied, compared or walked. */
  entry: 4,
  /** One character walked: size() counts code points, case mapping, split, hashing a fresh string … */
  char: 1,
  /** One character compared (==, <, startsWith): the engine compares memory, much faster than a walk. */
  compare: 1 / 8,
  /** A timestamp getter with a time zone (`now.getHours("Europe/Paris")`): ≈ 70 µs through Intl. */
  timeZone: 20_000,
});

const NODE: number = COST_WEIGHTS.node;
const ENTRY: number = COST_WEIGHTS.entry;
const CHAR: number = COST_WEIGHTS.char;
const COMPARE: number = COST_WEIGHTS.compare;
const S = INPUT_LIMITS.maxStringLength;
const N = INPUT_LIMITS.maxValues;
const T = INPUT_LIMITS.maxStringChars;
const SUBMODS = INPUT_LIMITS.maxSubmods;

const NOTHING: Bound = Object.freeze({ chars: 0, entries: 0, allChars: 0, allEntries: 0 });
/** Numbers, booleans, timestamps, durations; `string()` of one is at most 32 characters. */
const SCALAR = NOTHING;
const str = (chars: number): Bound => ({ chars, entries: 0, allChars: chars, allEntries: 0 });
const key = (chars: number): Bound => ({ ...str(chars), hashed: true });
/** Claims, reasons, init data: JSON of any shape within the input bounds. */
const JSON_INPUT: Bound = Object.freeze({
  chars: S,
  entries: N,
  allChars: T,
  allEntries: N,
  item: 'self',
  key: key(S),
});
/** `claims`, `init_data`: maps of JSON. */
const JSON_MAP: Bound = Object.freeze({ ...JSON_INPUT, chars: 0, item: JSON_INPUT });
/** `reasons`: a list of {check, status, message}, 4 values each. */
const REASONS: Bound = Object.freeze({
  chars: 0,
  entries: N / 4,
  allChars: T,
  allEntries: N,
  item: { chars: 0, entries: 3, allChars: T, allEntries: 3, item: str(S), key: key(8) },
});
const TRUST: Bound = Object.freeze({
  chars: 0,
  entries: 8,
  allChars: 8 * 32,
  allEntries: 8,
  item: SCALAR,
  key: key(32),
});
/** A submodule (typed fields below); its JSON parts share the input's totals with all the others. */
const SUBMOD: Bound = Object.freeze({ chars: 0, entries: 0, allChars: T + 3 * S, allEntries: N + 16 });
const SUBMOD_FIELDS: Record<string, Bound> = {
  name: str(S),
  status: str(S),
  kind: str(S),
  insecure: SCALAR,
  trust: TRUST,
  claims: JSON_MAP,
  reasons: REASONS,
};
const ALL_SUBMODS: Bound = Object.freeze({
  chars: 0,
  entries: SUBMODS,
  allChars: T + SUBMODS * 4 * S,
  allEntries: N + SUBMODS * 17,
  item: SUBMOD,
  key: key(S),
});
const GPUS: Bound = Object.freeze({ ...ALL_SUBMODS, key: undefined });
const RESOURCE: Bound = Object.freeze({ chars: 0, entries: 0, allChars: 4 * S, allEntries: 4 });
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
};
/** Namespaces that prefix a call (`optional.of(x)`), not values. */
const NAMESPACES = new Set(['optional', 'cel']);

const itemOf = (b: Bound): Bound => (b.item === 'self' ? b : (b.item ?? NOTHING));

/** A field or entry of a value: of a list or map, one of its values; of anything else, anything. */
const member = (b: Bound): Bound => (b.item !== undefined ? itemOf(b) : JSON_INPUT);

/** The least bound that holds both. */
function join(a: Bound, b: Bound): Bound {
  if (a === b || b === NOTHING) return a;
  if (a === NOTHING) return b;
  const item =
    a.item === 'self' && b.item === 'self'
      ? 'self'
      : a.item === undefined && b.item === undefined
        ? undefined
        : join(itemOf(a), itemOf(b));
  const keys =
    a.key === undefined && b.key === undefined ? undefined : join(a.key ?? NOTHING, b.key ?? NOTHING);
  // One side a list (items, no keys) or JSON of any shape, the result with keys: it may be either.
  const mayBeList = (x: Bound) => x.item !== undefined && (x.key === undefined || x.item === 'self');
  const mixed = keys !== undefined && item !== 'self' && (a.mixed || b.mixed || mayBeList(a) || mayBeList(b));
  return {
    chars: Math.max(a.chars, b.chars),
    entries: Math.max(a.entries, b.entries),
    allChars: Math.max(a.allChars, b.allChars),
    allEntries: Math.max(a.allEntries, b.allEntries),
    ...(item !== undefined ? { item } : {}),
    ...(keys !== undefined ? { key: keys } : {}),
    ...(a.hashed === true && b.hashed === true ? { hashed: true } : {}),
    ...(mixed ? { mixed: true as const } : {}),
  };
}

/** A list of `count` values each within `item`. */
function listOf(count: number, item: Bound): Bound {
  return {
    chars: 0,
    entries: count,
    allChars: count * item.allChars,
    allEntries: count * (1 + item.allEntries),
    item,
  };
}

/** Comparing two values for equality walks the smaller. */
const equality = (a: Bound, b: Bound): number =>
  Math.min(a.allChars, b.allChars) * COMPARE + Math.min(a.allEntries, b.allEntries) * ENTRY;

/** What a function call costs beyond its operands, and what it returns. */
type Call = (subject: Bound, args: Bound[]) => { own: number; result: Bound };

const scalar = (own: number): { own: number; result: Bound } => ({ own, result: SCALAR });
/** size() of a string counts code points; of a map, the library lists its keys. */
const walk: Call = (s) => scalar(s.chars * CHAR + s.entries * ENTRY);
const getter: Call = (_s, args) => scalar(args.length > 0 ? COST_WEIGHTS.timeZone : 0);

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
  string: (s) => ({ own: s.chars * CHAR, result: str(Math.max(32, s.chars)) }),
  // UTF-8 takes up to 3 bytes per UTF-16 code unit.
  bytes: (s) => ({ own: s.chars * CHAR, result: str(3 * s.chars) }),
  dyn: (s) => ({ own: 0, result: s }),
  type: () => scalar(0),
  // The library refuses strings outside 20..30 characters before parsing.
  timestamp: () => scalar(30 * CHAR),
  duration: (s) => scalar(s.chars * CHAR),
  has: () => scalar(0),
  startsWith: (s, [p = NOTHING]) => scalar(Math.min(s.chars, p.chars) * COMPARE),
  endsWith: (s, [p = NOTHING]) => scalar(Math.min(s.chars, p.chars) * COMPARE),
  contains: (s, [p = NOTHING]) => scalar((s.chars + p.chars) * CHAR),
  indexOf: (s, [p = NOTHING]) => scalar((s.chars + p.chars) * CHAR),
  // V8 searches backwards naively, comparing the pattern at every position (a 64 Ki-character claim
  // and a 1 KiB literal: ≈ 20 ms), unlike indexOf's linear-time search.
  lastIndexOf: (s, [p = NOTHING]) => scalar((s.chars + p.chars) * CHAR + s.chars * p.chars * COMPARE),
  // Full Unicode case mapping may lengthen a string (ß → SS): up to 3 code units for 1.
  lowerAscii: (s) => ({ own: s.chars * CHAR, result: str(3 * s.chars) }),
  upperAscii: (s) => ({ own: s.chars * CHAR, result: str(3 * s.chars) }),
  trim: (s) => ({ own: s.chars * CHAR, result: str(s.chars) }),
  substring: (s) => ({ own: s.chars * CHAR, result: str(s.chars) }),
  split: (s) => {
    // split("") makes one entry per character.
    const parts = { ...listOf(s.chars + 1, str(s.chars)), allChars: s.chars };
    return { own: s.chars * CHAR + parts.entries * ENTRY, result: parts };
  },
  join: (s, [sep = NOTHING]) => {
    const chars = s.allChars + s.entries * sep.chars;
    return { own: chars * CHAR + s.entries * ENTRY, result: str(chars) };
  },
  // bytes.json(): a value of any shape with at most one entry and one character per byte.
  json: (s) => ({
    own: s.chars * (CHAR + ENTRY),
    result: {
      chars: s.chars,
      entries: s.chars,
      allChars: s.chars,
      allEntries: s.chars,
      item: 'self',
      key: key(s.chars),
    },
  }),
  hex: (s) => ({ own: s.chars * CHAR, result: str(2 * s.chars) }),
  base64: (s) => ({ own: s.chars * CHAR, result: str(2 * s.chars) }),
  at: () => scalar(0),
  // Optional values are bounded by what they hold.
  of: (_s, [v = NOTHING]) => ({ own: 0, result: v }),
  ofNonZeroValue: (_s, [v = NOTHING]) => ({ own: equality(v, v), result: v }),
  none: () => ({ own: 0, result: NOTHING }),
  hasValue: () => scalar(0),
  value: (s) => ({ own: 0, result: s }),
  orValue: (s, [v = NOTHING]) => ({ own: 0, result: join(s, v) }),
  or: (s, [v = NOTHING]) => ({ own: 0, result: join(s, v) }),
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

/** The worst-case cost of a policy, in steps (see above); Infinity when it calls an unknown function. */
export function estimateCost(root: ASTNode): number {
  // A map lookup hashes its key, unless the engine already knows the hash (it keeps it in the string).
  const hash = (k: Bound): number => (k.hashed === true ? 0 : k.chars * CHAR);
  const estimate = (node: ASTNode, scope: Scope): { cost: number; bound: Bound } => {
    const all = (nodes: ASTNode[]) => nodes.map((n) => estimate(n, scope));
    const sum = (xs: { cost: number }[]) => xs.reduce((total, x) => total + x.cost, NODE);
    switch (node.op) {
      case 'value': {
        const v: unknown = node.args;
        return {
          cost: NODE,
          bound: typeof v === 'string' || v instanceof Uint8Array ? key(v.length) : SCALAR,
        };
      }
      case 'id':
        return { cost: NODE, bound: scope.get(node.args) ?? VARIABLES[node.args] ?? JSON_INPUT };
      case '.':
      case '.?': {
        const [obj, field] = node.args;
        const o = estimate(obj, scope);
        // A field of a map is one of its values; of anything else not known here, anything.
        const bound =
          o.bound === SUBMOD
            ? (SUBMOD_FIELDS[field] ?? JSON_INPUT)
            : o.bound === RESOURCE
              ? str(S)
              : member(o.bound);
        return { cost: o.cost + NODE, bound };
      }
      case '[]':
      case '[?]': {
        const [o, k] = all(node.args);
        return { cost: o!.cost + k!.cost + NODE + hash(k!.bound), bound: member(o!.bound) };
      }
      case 'list': {
        const items = all(node.args);
        const item = items.reduce((b, x) => join(b, x.bound), NOTHING);
        const bound: Bound = {
          chars: 0,
          entries: items.length,
          allChars: items.reduce((n, x) => n + x.bound.allChars, 0),
          allEntries: items.reduce((n, x) => n + 1 + x.bound.allEntries, 0),
          item,
        };
        return { cost: sum(items) + items.length * ENTRY, bound };
      }
      case 'map': {
        const pairs = node.args.map(([k, v]) => [estimate(k, scope), estimate(v, scope)] as const);
        const flat = pairs.flat();
        const bound: Bound = {
          chars: 0,
          entries: pairs.length,
          allChars: flat.reduce((n, x) => n + x.bound.allChars, 0),
          allEntries: pairs.reduce((n, [k, v]) => n + 1 + k.bound.allEntries + v.bound.allEntries, 0),
          item: pairs.reduce((b, [, v]) => join(b, v.bound), NOTHING),
          key: pairs.reduce((b, [k]) => join(b, k.bound), NOTHING),
        };
        return { cost: sum(flat) + pairs.reduce((n, [k]) => n + ENTRY + hash(k.bound), 0), bound };
      }
      case '!_':
      case '-_':
        return { cost: estimate(node.args, scope).cost + NODE, bound: SCALAR };
      case '&&':
      case '||':
      case '-':
      case '*':
      case '/':
      case '%':
        return { cost: sum(all(node.args)), bound: SCALAR };
      case '?:': {
        const [c, a, b] = all(node.args);
        return { cost: c!.cost + a!.cost + b!.cost + NODE, bound: join(a!.bound, b!.bound) };
      }
      case '==':
      case '!=': {
        const [a, b] = all(node.args);
        return { cost: sum([a!, b!]) + equality(a!.bound, b!.bound), bound: SCALAR };
      }
      case '<':
      case '<=':
      case '>':
      case '>=': {
        const [a, b] = all(node.args);
        return { cost: sum([a!, b!]) + Math.min(a!.bound.chars, b!.bound.chars) * COMPARE, bound: SCALAR };
      }
      case 'in': {
        const [a, l] = all(node.args);
        const x = a!.bound;
        const c = l!.bound;
        // In a list: each entry is compared with x, and the comparisons together walk at most the list
        // (or entries × x). In a map (c has keys): x is hashed. Whichever the right side may be.
        const inList =
          c.entries * ENTRY +
          Math.min(c.entries * x.allChars, c.allChars) * COMPARE +
          Math.min(c.entries * x.allEntries, c.allEntries) * ENTRY;
        const inMap = c.key !== undefined ? hash(x) : 0;
        return { cost: sum([a!, l!]) + inList + inMap, bound: SCALAR };
      }
      case '+': {
        const [a, b] = all(node.args);
        const x = a!.bound;
        const y = b!.bound;
        const bound: Bound = {
          chars: x.chars + y.chars,
          entries: x.entries + y.entries,
          allChars: x.allChars + y.allChars,
          allEntries: x.allEntries + y.allEntries,
          ...(x.item !== undefined || y.item !== undefined ? { item: join(itemOf(x), itemOf(y)) } : {}),
        };
        // Strings are joined lazily and flattened by whoever reads them; count the copy here.
        return { cost: sum([a!, b!]) + bound.chars * CHAR + bound.entries * ENTRY, bound };
      }
      case 'call':
      case 'rcall': {
        const name = node.args[0];
        const receiver = node.op === 'rcall' ? node.args[1] : undefined;
        const args = node.op === 'rcall' ? node.args[2] : node.args[1];
        if (receiver !== undefined && COMPREHENSIONS.has(name))
          return comprehension(name, receiver, args, scope);
        const call = CALLS[name];
        if (call === undefined) return { cost: Number.POSITIVE_INFINITY, bound: JSON_INPUT };
        // In call form (`size(x)`) the subject is the first argument; `optional.of(x)` has none.
        const namespace = receiver?.op === 'id' && NAMESPACES.has(receiver.args) && !scope.has(receiver.args);
        const operands = receiver === undefined || namespace ? args : [receiver, ...args];
        const evaluated = all(operands);
        const bounds = evaluated.map((x) => x.bound);
        const [subject, rest] = namespace ? [NOTHING, bounds] : [bounds[0] ?? NOTHING, bounds.slice(1)];
        const { own, result } = call(subject, rest);
        return { cost: sum(evaluated) + own, bound: result };
      }
      default:
        // Every operator the parser makes is handled above; an unknown one cannot be bounded.
        return { cost: Number.POSITIVE_INFINITY, bound: JSON_INPUT };
    }
  };

  const comprehension = (
    name: string,
    receiver: ASTNode,
    [variable, ...body]: ASTNode[],
    scope: Scope,
  ): { cost: number; bound: Bound } => {
    const r = estimate(receiver, scope);
    const c = r.bound;
    // Over a list the variable is an element, over a map a key; JSON from the input may be either, and
    // so may a list and a map joined (`cond ? dyn(list) : dyn(map)`).
    const each =
      c.item === 'self' ? c : c.key === undefined ? itemOf(c) : c.mixed ? join(c.key, itemOf(c)) : c.key;
    const inner = new Map(scope);
    if (variable?.op === 'id') inner.set(variable.args, each);
    const parts = body.map((b) => estimate(b, inner));
    const perIteration = parts.reduce((total, p) => total + p.cost, NODE);
    const cost = NODE + r.cost + c.entries * perIteration;
    let bound: Bound = SCALAR;
    if (name === 'filter') {
      const kept = listOf(c.entries, each);
      bound = {
        ...kept,
        allChars: Math.min(kept.allChars, c.allChars),
        allEntries: Math.min(kept.allEntries, c.allEntries),
      };
    } else if (name === 'map') bound = listOf(c.entries, parts[parts.length - 1]?.bound ?? NOTHING);
    return { cost, bound };
  };

  return Math.ceil(estimate(root, new Map()).cost);
}
