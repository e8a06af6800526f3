/**
 * `node --import ./record-loads.mjs …`: appends every module URL the program resolves, one a line, to
 * the file named by CLOISTER_LOAD_LOG. lazy.test.ts uses it to see which packages a verb loads.
 * The same file is the hooks module: register() loads it again on the hooks thread.
 */
import { appendFileSync } from 'node:fs';
import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';

if (isMainThread) register(import.meta.url);

export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(process.env.CLOISTER_LOAD_LOG, `${r.url}\n`);
  return r;
}
