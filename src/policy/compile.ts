/**
 * Compiling resource policies: CEL source → a checked, bounded, reusable evaluator.
 *
 * Policies are boolean CEL expressions over the input document described in docs/policy.md. They are
 * parsed and type-checked once against a typed environment, so a misspelt field (`cpu.statuss`) or a
 * type confusion (`cpu.status == 1`) is refused when the policy is stored, not at release time.
 */
import { type ASTNode, Environment, type ParseResult, serialize } from '@marcbachmann/cel-js';
import { INPUT_LIMITS } from './input-limits.js';

/**
 * Structural bounds on a policy. CEL has no loops, so evaluation cost is the number of AST nodes
 * times the sizes of the lists that comprehensions (`all`, `exists`, `map`, …) walk; bounding the
 * nodes, the nesting of comprehensions and (in input.ts) the size of the input bounds the cost.
 */
export const POLICY_LIMITS = Object.freeze({
  /** Characters of source. */
  maxSourceLength: 16_384,
  maxAstNodes: 1024,
  maxDepth: 32,
  maxListElements: 256,
  maxMapEntries: 256,
  maxCallArguments: 8,
  /** Comprehensions inside comprehensions: 2 allows `gpus.all(g, g.reasons.all(r, …))`. */
  maxComprehensionNesting: 2,
  /** Worst-case steps over any input within INPUT_LIMITS (estimateCost): tens of ms at worst. */
  maxCost: 5_000_000,
});

const COMPREHENSIONS = new Set(['all', 'exists', 'exists_one', 'map', 'filter']);

/**
 * Functions a policy may not call, and why. `matches` runs a JavaScript regular expression, which can
 * backtrack exponentially on a claim an attacker shapes; `cel.bind` lets a policy double a value per
 * binding, so its size would no longer be bounded by the node count.
 */
const FORBIDDEN: Record<string, string> = {
  matches:
    'matches() is not allowed: JavaScript regular expressions can take exponential time on claims the ' +
    'attester controls; use ==, in, startsWith(), endsWith() or contains()',
  bind: 'cel.bind() is not allowed: it lets a value double in size per binding, which defeats the cost bound',
};

export type PolicyErrorCode =
  | 'policy-empty'
  | 'policy-too-large'
  | 'policy-syntax'
  | 'policy-type'
  | 'policy-not-bool'
  | 'policy-forbidden'
  | 'policy-too-costly';

/** A policy that cannot be compiled, with the position (1-based line and column) of the problem. */
export class PolicyError extends Error {
  override name = 'PolicyError';
  constructor(
    readonly code: PolicyErrorCode,
    /** The problem alone, without position. */
    readonly detail: string,
    readonly line: number,
    readonly column: number,
    /** Offset (UTF-16 code units) of the problem in the source. */
    readonly offset: number,
    /** The source line and a caret under the problem, for display. */
    readonly excerpt: string,
  ) {
    super(`${code} at line ${line}, column ${column}: ${detail}`);
  }
}

/** One clause of a top-level conjunction `a && b && c` (the whole policy when it is not one). */
export interface Conjunct {
  /** The clause's source text as written (without enclosing parentheses). */
  source: string;
  /** Offset of the clause in the policy source. */
  offset: number;
  line: number;
  column: number;
  /** @internal evaluator for this clause alone */
  readonly run: ParseResult;
}

export interface CompiledPolicy {
  readonly source: string;
  /** @internal evaluator for the whole policy */
  readonly run: ParseResult;
  /** The top-level conjuncts, for explain(). */
  readonly conjuncts: readonly Conjunct[];
  /** Worst-case evaluation cost in steps over any input within INPUT_LIMITS (≤ POLICY_LIMITS.maxCost). */
  readonly cost: number;
}

/** Submodule as policies see it; fields are documented in docs/policy.md. */
export class CelSubmod {
  constructor(
    readonly name: string,
    readonly status: string,
    readonly trust: Map<string, bigint>,
    readonly claims: Record<string, unknown>,
    readonly kind: string,
    readonly insecure: boolean,
    readonly reasons: Record<string, string>[],
  ) {}
}

export class CelResource {
  constructor(
    readonly uri: string,
    readonly repository: string,
    readonly type: string,
    readonly tag: string,
  ) {}
}

let environment: Environment | undefined;

/** The one typed environment every policy is compiled in; created on first use (it is not cheap). */
export function policyEnvironment(): Environment {
  environment ??= new Environment({
    enableOptionalTypes: true,
    limits: {
      maxAstNodes: POLICY_LIMITS.maxAstNodes,
      maxDepth: POLICY_LIMITS.maxDepth,
      maxListElements: POLICY_LIMITS.maxListElements,
      maxMapEntries: POLICY_LIMITS.maxMapEntries,
      maxCallArguments: POLICY_LIMITS.maxCallArguments,
    },
  })
    .registerType('cloister.Submod', {
      ctor: CelSubmod,
      fields: {
        name: 'string',
        status: 'string',
        trust: 'map<string, int>',
        claims: 'map<string, dyn>',
        kind: 'string',
        insecure: 'bool',
        reasons: 'list<map<string, string>>',
      },
    })
    .registerType('cloister.Resource', {
      ctor: CelResource,
      fields: { uri: 'string', repository: 'string', type: 'string', tag: 'string' },
    })
    .registerVariable('submods', 'map<string, cloister.Submod>')
    .registerVariable('cpu', 'cloister.Submod')
    .registerVariable('gpus', 'list<cloister.Submod>')
    .registerVariable('resource', 'cloister.Resource')
    .registerVariable('tenant', 'string')
    .registerVariable('tee', 'string')
    .registerVariable('init_data', 'map<string, dyn>')
    .registerVariable('now', 'google.protobuf.Timestamp')
    .registerVariable('dev_mode', 'bool');
  return environment;
}

function position(source: string, offset: number): { line: number; column: number; excerpt: string } {
  const at = Math.max(0, Math.min(offset, source.length));
  const before = source.slice(0, at);
  const line = before.split('\n').length;
  const lineStart = before.lastIndexOf('\n') + 1;
  const lineEnd = source.indexOf('\n', at);
  const text = source.slice(lineStart, lineEnd === -1 ? undefined : lineEnd);
  const column = at - lineStart + 1;
  return { line, column, excerpt: `${text}\n${' '.repeat(column - 1)}^` };
}

function policyError(code: PolicyErrorCode, detail: string, source: string, offset: number): PolicyError {
  const p = position(source, offset);
  return new PolicyError(code, detail, p.line, p.column, offset, p.excerpt);
}

interface LibError {
  name?: unknown;
  summary?: unknown;
  message?: unknown;
  range?: { start: number };
}

/** Turns the CEL library's ParseError/TypeError into a PolicyError at the same position. */
function fromLibError(e: unknown, source: string, base: number): PolicyError {
  const err = (typeof e === 'object' && e !== null ? e : {}) as LibError;
  const summary =
    typeof err.summary === 'string' && err.summary !== ''
      ? err.summary
      : String(err.message ?? e).split('\n')[0]!;
  const code: PolicyErrorCode =
    err.name === 'TypeError' && summary !== '' && !/^Exceeded max/.test(summary)
      ? 'policy-type'
      : /^Exceeded max/.test(summary)
        ? 'policy-too-large'
        : 'policy-syntax';
  return policyError(code, summary, source, base + (err.range?.start ?? 0));
}

function children(node: ASTNode): ASTNode[] {
  const out: ASTNode[] = [];
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) for (const x of v) visit(x);
    else if (typeof v === 'object' && v !== null && 'op' in v && 'args' in v) out.push(v as ASTNode);
  };
  if (node.op !== 'value') visit(node.args);
  return out;
}

/**
 * Refuses forbidden functions and comprehensions nested more than maxComprehensionNesting deep; the
 * library bounds the node count, depth and literal sizes, and estimateCost bounds the rest.
 */
function checkStructure(root: ASTNode, source: string): void {
  const walk = (node: ASTNode, nesting: number): void => {
    let inner = nesting;
    const receiver = node.op === 'rcall' ? node.args[1] : undefined;
    if (node.op === 'rcall' || node.op === 'call') {
      const name = node.args[0];
      const reason =
        name === 'bind'
          ? receiver?.op === 'id' && receiver.args === 'cel'
            ? FORBIDDEN.bind
            : undefined
          : FORBIDDEN[name];
      if (reason !== undefined) throw policyError('policy-forbidden', reason, source, node.start);
      if (receiver !== undefined && COMPREHENSIONS.has(name)) {
        inner = nesting + 1;
        if (inner > POLICY_LIMITS.maxComprehensionNesting) {
          throw policyError(
            'policy-too-large',
            `comprehensions (${[...COMPREHENSIONS].join(', ')}) may be nested at most ` +
              `${POLICY_LIMITS.maxComprehensionNesting} deep, to keep evaluation cost bounded`,
            source,
            node.start,
          );
        }
      }
    }
    // A comprehension's receiver (the list it walks) is outside it; its variable and body are inside.
    for (const c of children(node)) walk(c, c === receiver ? nesting : inner);
  };
  walk(root, 0);
}

/*
 * Worst-case cost, in steps, of evaluating a policy on any input within INPUT_LIMITS (cf. cel-go's
 * cost estimator). A list or map from the input may hold up to INPUT_LIMITS.maxValues entries (N);
 * `gpus` and `submods` at most maxSubmods. Every node costs 1; an operation that walks a collection
 * (`in` a list, `==` or `+` between two values that may be collections) costs N, unless an operand is
 * known to be a scalar (a literal, a typed field such as `g.status`); a comprehension multiplies the
 * cost of its body by the size of what it walks. The estimate is an upper bound, not a prediction;
 * one step is about one element comparison (≈ 7 ns on the development machine).
 */
type Shape = 'scalar' | 'submod' | 'submods' | 'small-list' | 'unknown';

const SUBMOD_SCALARS = new Set(['name', 'status', 'kind', 'insecure']);
const SCALAR_VARIABLES = new Set(['tenant', 'tee', 'dev_mode', 'now']);
/** Functions and methods whose result is a scalar (their own work is native and linear in a string). */
const SCALAR_FUNCTIONS = new Set([
  'size',
  'int',
  'uint',
  'double',
  'string',
  'bool',
  'bytes',
  'timestamp',
  'duration',
  'type',
  'has',
  'startsWith',
  'endsWith',
  'contains',
  'indexOf',
  'lastIndexOf',
  'lowerAscii',
  'upperAscii',
  'trim',
  'substring',
  'charAt',
  'hex',
  'base64',
  'all',
  'exists',
  'exists_one',
  'hasValue',
  'getFullYear',
  'getMonth',
  'getDayOfMonth',
  'getDayOfWeek',
  'getDayOfYear',
  'getDate',
  'getHours',
  'getMinutes',
  'getSeconds',
  'getMilliseconds',
]);
const COMPARISONS = new Set(['<', '<=', '>', '>=', '==', '!=', 'in', '&&', '||', '!_']);

export function estimateCost(root: ASTNode): number {
  // Evaluating a node takes about as long as 4 element comparisons inside `in` or `==` (measured).
  const NODE = 4;
  const N = INPUT_LIMITS.maxValues;
  const small = INPUT_LIMITS.maxSubmods;
  const shapeOf = (node: ASTNode, scope: Map<string, Shape>): Shape => {
    switch (node.op) {
      case 'value':
        return 'scalar';
      case 'id':
        if (scope.has(node.args)) return scope.get(node.args)!;
        if (node.args === 'cpu') return 'submod';
        if (node.args === 'submods') return 'submods';
        if (node.args === 'gpus') return 'small-list';
        return SCALAR_VARIABLES.has(node.args) ? 'scalar' : 'unknown';
      case '.':
      case '.?': {
        const [obj, field] = node.args;
        const base = shapeOf(obj, scope);
        if (base === 'submod') return SUBMOD_SCALARS.has(field) ? 'scalar' : 'unknown';
        if (obj.op === 'id' && obj.args === 'resource') return 'scalar';
        // <submod>.trust.<claim> is an int.
        if (obj.op === '.' && obj.args[1] === 'trust' && shapeOf(obj.args[0], scope) === 'submod')
          return 'scalar';
        return 'unknown';
      }
      case '[]':
      case '[?]': {
        const base = shapeOf(node.args[0], scope);
        return base === 'submods' || base === 'small-list' ? 'submod' : 'unknown';
      }
      case 'call':
      case 'rcall': {
        const name = node.args[0];
        if (SCALAR_FUNCTIONS.has(name)) return 'scalar';
        if (node.op === 'rcall' && (name === 'filter' || name === 'map')) {
          const base = shapeOf(node.args[1], scope);
          if (name === 'filter' && base === 'small-list') return 'small-list';
          return base === 'small-list' || base === 'submods' ? 'small-list' : 'unknown';
        }
        return 'unknown';
      }
      case '?:': {
        const a = shapeOf(node.args[1], scope);
        return a === shapeOf(node.args[2], scope) ? a : 'unknown';
      }
      default:
        return COMPARISONS.has(node.op) || ['-_', '-', '*', '/', '%'].includes(node.op)
          ? 'scalar'
          : 'unknown';
    }
  };
  const sizeOf = (node: ASTNode, scope: Map<string, Shape>): number => {
    if (node.op === 'list') return node.args.length;
    if (node.op === 'map') return node.args.length;
    const shape = shapeOf(node, scope);
    return shape === 'submods' || shape === 'small-list' ? small : N;
  };
  const cost = (node: ASTNode, scope: Map<string, Shape>): number => {
    if (node.op === 'rcall' && COMPREHENSIONS.has(node.args[0])) {
      const [, receiver, args] = node.args;
      const variable = args[0];
      const base = shapeOf(receiver, scope);
      const inner = new Map(scope);
      if (variable?.op === 'id') {
        // Over a map, the variable is a key (a string); over gpus, a submodule.
        const literal = receiver.op === 'list' && receiver.args.every((e) => e.op === 'value');
        inner.set(
          variable.args,
          base === 'submods' || literal ? 'scalar' : base === 'small-list' ? 'submod' : 'unknown',
        );
      }
      const body = args.slice(1).reduce((sum, a) => sum + cost(a, inner), 0);
      return NODE + cost(receiver, scope) + sizeOf(receiver, scope) * body;
    }
    let own = NODE;
    const op = node.op;
    if (op === 'in') {
      const [, right] = node.args;
      const shape = shapeOf(right, scope);
      // Membership in a map is a hash lookup; in a list, a walk.
      own += right.op === 'list' ? right.args.length : shape === 'submods' || right.op === 'map' ? 0 : N;
    } else if (op === '==' || op === '!=' || op === '+') {
      const [a, b] = node.args;
      const scalar = shapeOf(a, scope) === 'scalar' || shapeOf(b, scope) === 'scalar';
      // Concatenating lists allocates and copies both: measured about 4 comparisons per element.
      if (!scalar) own += op === '+' ? 4 * N : N;
    } else if ((op === 'call' || op === 'rcall') && node.args[0] === 'join') {
      own += N;
    }
    return children(node).reduce((sum, c) => sum + cost(c, scope), own);
  };
  return cost(root, new Map());
}

function conjunctsOf(root: ASTNode): ASTNode[] {
  if (root.op !== '&&') return [root];
  return [...conjunctsOf(root.args[0]), ...conjunctsOf(root.args[1])];
}

function parseChecked(env: Environment, text: string, source: string, base: number): ParseResult {
  let run: ParseResult;
  try {
    run = env.parse(text);
  } catch (e) {
    throw fromLibError(e, source, base);
  }
  const checked = run.check();
  if (!checked.valid) throw fromLibError(checked.error, source, base);
  if (checked.type !== 'bool' && checked.type !== 'dyn') {
    throw policyError(
      'policy-not-bool',
      `a policy must be a boolean expression; this one is of type ${checked.type}`,
      source,
      base,
    );
  }
  checkStructure(run.ast, source);
  return run;
}

/**
 * Parses and type-checks a policy. Throws a PolicyError (with line and column) when the source is
 * empty, too large or too costly, not valid CEL, not well-typed over the policy input, not boolean, or uses a
 * forbidden function. Compile once and reuse the result: compiling costs far more than evaluating.
 */
export function compilePolicy(source: string): CompiledPolicy {
  if (typeof source !== 'string' || source.trim() === '') {
    throw policyError('policy-empty', 'the policy is empty', typeof source === 'string' ? source : '', 0);
  }
  if (source.length > POLICY_LIMITS.maxSourceLength) {
    throw policyError(
      'policy-too-large',
      `the policy is ${source.length} characters; at most ${POLICY_LIMITS.maxSourceLength} are allowed`,
      source,
      POLICY_LIMITS.maxSourceLength,
    );
  }
  const env = policyEnvironment();
  const run = parseChecked(env, source, source, 0);
  const cost = estimateCost(run.ast);
  if (cost > POLICY_LIMITS.maxCost) {
    throw policyError(
      'policy-too-costly',
      `on the largest input allowed this policy may take ${cost.toExponential(1)} steps; at most ` +
        `${POLICY_LIMITS.maxCost.toExponential(1)} are allowed. Write \`x in list\` rather than ` +
        '`list.exists(y, y == x)`, compare with literals or typed fields (g.status) inside comprehensions, ' +
        'and do not walk a claim list inside a walk over another',
      source,
      0,
    );
  }
  const parts = conjunctsOf(run.ast);
  const conjuncts = parts.map((node): Conjunct => {
    const text = clauseText(env, source, node);
    const p = position(source, node.start);
    return {
      source: text,
      offset: node.start,
      line: p.line,
      column: p.column,
      // A single clause reuses the whole policy's evaluator; several are each compiled on their own.
      run: parts.length === 1 ? run : parseClause(env, text, source, node.start),
    };
  });
  return Object.freeze({ source, run, conjuncts: Object.freeze(conjuncts), cost });
}

/**
 * The clause as the author wrote it. The parser's node ranges stop before closing parentheses of
 * nested groups, so the slice is extended over them until it parses to the same tree; failing that,
 * the clause is printed from its tree (same meaning, normalised spacing and parentheses).
 */
function clauseText(env: Environment, source: string, node: ASTNode): string {
  const canonical = serialize(node);
  let end = node.end;
  for (let extra = 0; extra <= POLICY_LIMITS.maxDepth; extra++) {
    const text = source.slice(node.start, end);
    try {
      if (serialize(env.parse(text).ast) === canonical) return text;
    } catch {
      // not yet balanced
    }
    const next = source.indexOf(')', end);
    if (next === -1) break;
    end = next + 1;
  }
  return canonical;
}

/** A conjunct is well-typed as part of a well-typed `&&`, but may be `dyn`; it is still checked. */
function parseClause(env: Environment, text: string, source: string, base: number): ParseResult {
  try {
    return parseChecked(env, text, source, base);
  } catch (e) {
    // Cannot happen for a slice of a checked conjunction; fail loudly rather than explain wrongly.
    throw new Error(`internal: conjunct ${JSON.stringify(text)} does not compile alone`, { cause: e });
  }
}
