/** Walking the CEL library's syntax tree. */
import type { ASTNode } from '@marcbachmann/cel-js';

/** The macros that walk a list or map, binding a variable for their body. */
export const COMPREHENSIONS = new Set(['all', 'exists', 'exists_one', 'map', 'filter']);

/** The sub-expressions of a node, in source order. */
export function children(node: ASTNode): ASTNode[] {
  const out: ASTNode[] = [];
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) for (const x of v) visit(x);
    else if (typeof v === 'object' && v !== null && 'op' in v && 'args' in v) out.push(v as ASTNode);
  };
  if (node.op !== 'value') visit(node.args);
  return out;
}
