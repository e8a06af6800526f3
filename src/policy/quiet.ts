/**
 * Running a compiled CEL expression with cheap errors. CEL absorbs errors (`x.nokey == 1 || true` is
 * true), and the library does it by building an exception per error and catching it; inside a walk
 * over a claim list that the attester shapes, a realistic policy may raise one per item. Each of them
 * would capture a stack trace and, above all, format a highlighted excerpt of the source by scanning
 * it from the start up to the error (`formatErrorWithHighlight` in the library's errors.js): 4000
 * errors behind 14 KB of clauses took over a second. Policies only ever report the first line of
 * one error's message (the summary, evaluate.ts), so during evaluation the excerpt is not built and
 * no stack is captured: the library formats the excerpt only when the node carries its `input`
 * (the source), which the AST nodes' class exposes through a getter that is made to answer nothing
 * while a policy runs.
 */
import type { ASTNode, ParseResult } from '@marcbachmann/cel-js';

/** How many evaluations are running (nested only if a library callback evaluated again). */
let running = 0;
let installed = false;

/** Makes AST nodes hide their source while a policy runs (once; every parsed node shares the class). */
function install(node: ASTNode): void {
  const proto: object = Object.getPrototypeOf(node);
  const original = Object.getOwnPropertyDescriptor(proto, 'input');
  const get = original?.get;
  if (get === undefined || original?.configurable !== true) {
    // The library changed how nodes hold their source: errors inside walks would be expensive again.
    throw new Error('internal: @marcbachmann/cel-js AST nodes no longer expose `input` through a getter');
  }
  Object.defineProperty(proto, 'input', {
    ...original,
    get(this: unknown) {
      return running > 0 ? undefined : get.call(this);
    },
  });
  installed = true;
}

/** Evaluates `run` on `activation` with errors that cost no more than a few µs each (see above). */
export function runQuietly(run: ParseResult, activation: Record<string, unknown>): unknown {
  if (!installed) install(run.ast);
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  running++;
  try {
    return run(activation);
  } finally {
    running--;
    Error.stackTraceLimit = limit;
  }
}
