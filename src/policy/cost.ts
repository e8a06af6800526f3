import type { ASTNode } from '@marcbachmann/cel-js';
import { COMPREHENSIONS, children } from './ast.js';
import { INPUT_LIMITS } from './input-limits.js';

/**
 * Worst-case cost, in steps, of evaluating a policy on any input within INPUT_LIMITS (cf. cel-go's
 * cost estimator). A list or map from the input may hold up to INPUT_LIMITS.maxValues entries (N);
 * `gpus` and `submods` at most maxSubmods. Every node costs 4 steps. An operation that walks a
 * collection costs more unless an operand is known to be a scalar (a literal, a typed field such as
 * `g.status`): `in` a list and `==`/`!=` cost N, `+` 4 N (it copies both lists). A comprehension
 * multiplies the cost of its body by the size of what it walks. The estimate is an upper bound, not a
 * prediction; one step is about one element comparison (≈ 7 ns on the development machine).
 */

/** What an expression is known to be, from the typed input and the shape of the tree. */
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

/** The worst-case cost of a policy, in steps (see above). */
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
