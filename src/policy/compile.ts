/**
 * Compiling resource policies: CEL source → a checked, bounded, reusable evaluator.
 *
 * Policies are boolean CEL expressions over the input document described in docs/policy.md. They are
 * parsed and type-checked once against a typed environment, so a misspelt field (`cpu.statuss`) or a
 * type confusion (`cpu.status == 1`) is refused when the policy is stored, not at release time.
 */
import { type ASTNode, Environment, type ParseResult, serialize } from '@marcbachmann/cel-js';
import { COMPREHENSIONS, children } from './ast.js';
import { estimateCost } from './cost.js';

/**
 * Bounds on a policy. With the bounds on the input (input-limits.ts) they bound evaluation cost; the
 * worst case is estimated at compile time (cost.ts) and refused over maxCost.
 */
export const POLICY_LIMITS = Object.freeze({
  /** Characters of source. */
  maxSourceLength: 16_384,
  maxAstNodes: 1024,
  maxDepth: 32,
  maxListElements: 256,
  maxMapEntries: 256,
  maxCallArguments: 8,
  /** Characters (bytes for a bytes literal) of one string literal. */
  maxStringLiteral: 1024,
  /** Comprehensions inside comprehensions: 2 allows `gpus.all(g, g.reasons.all(r, …))`. */
  maxComprehensionNesting: 2,
  /**
   * Worst-case steps over any input within INPUT_LIMITS (cost.ts). A step takes at most a few ns on
   * the development machine (test/policy/fuzz.slow.test.ts), so a policy takes a few ms at worst
   * when it raises no errors (errors are charged by the estimate that decides where a policy runs:
   * MAIN_THREAD_MAX_COST).
   */
  maxCost: 1_000_000,
});

/**
 * The most a policy may cost, errors included (CompiledPolicy.costWithErrors), to be evaluated on the
 * caller's thread: a few ms at most. A costlier policy is evaluated off the event loop under a time
 * limit by the key broker (src/kbs/policy-pool.ts), since each CEL error costs about a µs.
 */
export const MAIN_THREAD_MAX_COST = 1_000_000;

/** Whether a policy is cheap enough, in the worst case and errors included, to evaluate inline. */
export function evaluatesOnMainThread(policy: CompiledPolicy): boolean {
  return policy.costWithErrors <= MAIN_THREAD_MAX_COST;
}

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

/** duration() parses with a regular expression that takes cubic time on a long run of digits. */
const MAX_DURATION_LITERAL = 64;

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
  /**
   * The same with every CEL error the policy may raise charged (≈ 120 steps each, cost.ts): not
   * bounded, but what decides where the policy is evaluated (evaluatesOnMainThread).
   */
  readonly costWithErrors: number;
  /**
   * Every name the policy refers to (input variables, and the variables of its walks): lets the key
   * broker skip looking up input a policy never reads (`receipts`).
   */
  readonly names: ReadonlySet<string>;
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

/** What trained a receipt's outputs, as policies see it (docs/policy.md, `receipts`). */
export class CelTrainer {
  constructor(
    readonly kind: string,
    readonly name: string,
    readonly digest: string,
  ) {}
}

/** One output of a training receipt sealed to the requested resource. */
export class CelReceiptOutput {
  constructor(
    readonly file: string,
    readonly sha256: string,
  ) {}
}

/**
 * The TEE whose attested session appended a receipt, from that session's attestation result;
 * `measurement`: its launch measurement as lower-case hex ('' when its kind has none).
 */
export class CelReceiptTee {
  constructor(
    readonly kind: string,
    readonly insecure: boolean,
    readonly status: string,
    readonly measurement: string,
  ) {}
}

/** A training receipt the key broker recorded; fields are documented in docs/policy.md. */
export class CelReceipt {
  constructor(
    readonly job: string,
    readonly sha256: string,
    readonly trainer: CelTrainer,
    readonly outputs: CelReceiptOutput[],
    readonly tee: CelReceiptTee,
    readonly recorded_at: Date,
  ) {}
}

let environment: Environment | undefined;

/** The one typed environment every policy is compiled in; created on first use (it is not cheap). */
export function policyEnvironment(): Environment {
  environment ??= new Environment({
    enableOptionalTypes: true,
    limits: environmentLimits(),
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
    .registerType('cloister.Trainer', {
      ctor: CelTrainer,
      fields: { kind: 'string', name: 'string', digest: 'string' },
    })
    .registerType('cloister.ReceiptOutput', {
      ctor: CelReceiptOutput,
      fields: { file: 'string', sha256: 'string' },
    })
    .registerType('cloister.ReceiptTee', {
      ctor: CelReceiptTee,
      fields: { kind: 'string', insecure: 'bool', status: 'string', measurement: 'string' },
    })
    .registerType('cloister.Receipt', {
      ctor: CelReceipt,
      fields: {
        job: 'string',
        sha256: 'string',
        trainer: 'cloister.Trainer',
        outputs: 'list<cloister.ReceiptOutput>',
        tee: 'cloister.ReceiptTee',
        recorded_at: 'google.protobuf.Timestamp',
      },
    })
    .registerVariable('submods', 'map<string, cloister.Submod>')
    .registerVariable('cpu', 'cloister.Submod')
    .registerVariable('gpus', 'list<cloister.Submod>')
    .registerVariable('resource', 'cloister.Resource')
    .registerVariable('tenant', 'string')
    .registerVariable('tee', 'string')
    .registerVariable('init_data', 'map<string, dyn>')
    .registerVariable('now', 'google.protobuf.Timestamp')
    .registerVariable('dev_mode', 'bool')
    .registerVariable('receipts', 'list<cloister.Receipt>');
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

/**
 * Refuses forbidden functions, duration() on anything but a short literal, string literals over
 * maxStringLiteral and comprehensions nested more than maxComprehensionNesting deep; the library bounds
 * the node count, depth and list/map literal sizes, and estimateCost bounds the rest.
 */
function checkStructure(root: ASTNode, source: string): void {
  const walk = (node: ASTNode, nesting: number): void => {
    let inner = nesting;
    const receiver = node.op === 'rcall' ? node.args[1] : undefined;
    if (node.op === 'value' && (typeof node.args === 'string' || node.args instanceof Uint8Array)) {
      if (node.args.length > POLICY_LIMITS.maxStringLiteral) {
        throw policyError(
          'policy-too-large',
          `a string literal of ${node.args.length} characters; at most ${POLICY_LIMITS.maxStringLiteral} are allowed`,
          source,
          node.start,
        );
      }
    }
    if (node.op === 'call' && node.args[0] === 'duration') {
      const [arg] = node.args[1];
      if (arg?.op !== 'value' || typeof arg.args !== 'string' || arg.args.length > MAX_DURATION_LITERAL) {
        throw policyError(
          'policy-forbidden',
          `duration() takes a string literal of at most ${MAX_DURATION_LITERAL} characters, such as ` +
            'duration("24h"): the library parses it in time cubic in its length',
          source,
          node.start,
        );
      }
    }
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
  const env = policyEnvironment();
  const run = parseSource(env, source);
  const cost = estimateCost(run.ast);
  if (cost > POLICY_LIMITS.maxCost) {
    throw policyError(
      'policy-too-costly',
      `on the largest input allowed this policy may take ${cost.toExponential(1)} steps; at most ` +
        `${POLICY_LIMITS.maxCost.toExponential(1)} are allowed. Write \`x in list\` rather than ` +
        '`list.exists(y, y == x)`, do not walk a claim list inside a walk over another, and keep work on ' +
        'long strings (size(), contains(), lowerAscii(), +) out of comprehensions',
      source,
      0,
    );
  }
  const conjuncts = splitConjuncts(env, source, run);
  const costWithErrors = estimateCost(run.ast, { errors: true });
  const names = new Set<string>();
  const collect = (node: ASTNode): void => {
    if (node.op === 'id') names.add(node.args);
    for (const c of children(node)) collect(c);
  };
  collect(run.ast);
  return Object.freeze({
    source,
    run,
    conjuncts: Object.freeze(conjuncts),
    cost,
    costWithErrors,
    names,
  });
}

/**
 * @internal The checks every CEL expression here passes, in `env`: not empty, not too large, valid
 * CEL, well-typed, boolean, no forbidden function (compilePolicy; document.ts with its own variables).
 */
export function parseSource(env: Environment, source: string): ParseResult {
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
  return parseChecked(env, source, source, 0);
}

/** @internal The top-level conjuncts of a checked expression, each with its own evaluator. */
export function splitConjuncts(env: Environment, source: string, run: ParseResult): Conjunct[] {
  const parts = conjunctsOf(run.ast);
  return parts.map((node): Conjunct => {
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
}

/** The limits every environment here is created with (policyEnvironment, document.ts). */
export function environmentLimits() {
  return {
    maxAstNodes: POLICY_LIMITS.maxAstNodes,
    maxDepth: POLICY_LIMITS.maxDepth,
    maxListElements: POLICY_LIMITS.maxListElements,
    maxMapEntries: POLICY_LIMITS.maxMapEntries,
    maxCallArguments: POLICY_LIMITS.maxCallArguments,
  };
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
