/**
 * Loads an optional dependency. Node-only (hence node.ts; the rest of src/util runs in browsers too).
 * The optional dependencies are the heavy native engines and database drivers that only some commands
 * need (node-llama-cpp, onnxruntime-node, @huggingface/transformers, pg, @redis/client,
 * better-sqlite3). package.json lists the first five as optional peer dependencies, so installing
 * `cloister` for its client SDK does not pull them, and better-sqlite3 (the broker's default store) as
 * an optional dependency, whose failed native build does not fail the install. The code that needs one
 * loads it on first use, and when it is not installed says so in one line with the install command,
 * instead of Node's "Cannot find package" stack.
 *
 * Only the package itself being absent becomes a MissingDependencyError; a package that is there but
 * fails to load (a missing native binary, a missing dependency of its own) keeps its own error.
 */
import { createRequire } from 'node:module';

export class MissingDependencyError extends Error {
  readonly code = 'missing-dependency' as const;
  constructor(
    /** The npm package that is not installed. */
    readonly dependency: string,
    message: string,
  ) {
    super(message);
    this.name = 'MissingDependencyError';
  }
}

// Resolves from this file, which sits in the same package as the code that needs the dependency:
// in an installed copy that is the user's node_modules (peers are installed beside `cloister`).
const require = createRequire(import.meta.url);

/** `npm install NAME@RANGE` with the range package.json declares for it, so the versions match. */
function installCommand(name: string): string {
  // src/util/optional and dist/util/optional are both three levels below the package root.
  const pkg = require('../../../package.json') as Record<
    'peerDependencies' | 'optionalDependencies',
    Record<string, string> | undefined
  >;
  const range = pkg.peerDependencies?.[name] ?? pkg.optionalDependencies?.[name];
  return `npm install ${range ? `${name}@${range}` : name}`;
}

function missing(name: string, purpose: string): MissingDependencyError {
  return new MissingDependencyError(name, `install ${name}: ${installCommand(name)} (${purpose} needs it)`);
}

/** Whether `e` says that `name` itself could not be found (not something it imports). */
function isAbsent(e: unknown, name: string): boolean {
  const { code, message } = e as { code?: unknown; message?: unknown };
  if (typeof message !== 'string') return false;
  // ESM: "Cannot find package 'pg' imported from …"; CommonJS: "Cannot find module 'pg'\nRequire stack: …".
  if (code === 'ERR_MODULE_NOT_FOUND') return message.startsWith(`Cannot find package '${name}' `);
  if (code === 'MODULE_NOT_FOUND') return message.startsWith(`Cannot find module '${name}'`);
  return false;
}

/**
 * Imports the optional package `name` (ESM or CommonJS; a CommonJS package's exports are `default`).
 * `purpose` completes "… needs it", e.g. 'serving GGUF models'. Throws MissingDependencyError when it
 * is not installed.
 */
export async function importOptional<T>(name: string, purpose: string): Promise<T> {
  try {
    return (await import(name)) as T;
  } catch (e) {
    if (isAbsent(e, name)) throw missing(name, purpose);
    throw e;
  }
}

/** The same for a CommonJS package needed synchronously (in a constructor). */
export function requireOptional<T>(name: string, purpose: string): T {
  try {
    return require(name) as T;
  } catch (e) {
    if (isAbsent(e, name)) throw missing(name, purpose);
    throw e;
  }
}

/**
 * Throws MissingDependencyError unless `name` is installed, without loading it: for a package that
 * another thread loads (onnxruntime-node, in the ONNX engine's workers), so the absence is reported
 * here, once, rather than as a worker's failure.
 */
export function assertInstalled(name: string, purpose: string): void {
  try {
    require.resolve(name);
  } catch (e) {
    // An ESM-only package resolves for import but not for require: it is there.
    if (isAbsent(e, name)) throw missing(name, purpose);
  }
}
