import { parseResourcePath } from '../wire/index.js';
import { KbsError } from './errors.js';
import type { PolicyScope } from './store/types.js';

/** Policy scopes as operators write them: "default", "repository:<name>", "resource:<repo>/<type>/<tag>". */
export function parseScope(v: unknown): PolicyScope {
  if (v === 'default') return { kind: 'default' };
  if (typeof v === 'string' && v.startsWith('repository:')) {
    const repository = v.slice('repository:'.length);
    if (!/^[A-Za-z0-9._-]+$/.test(repository))
      throw new KbsError('bad-scope', `bad repository name ${repository}`);
    return { kind: 'repository', repository };
  }
  if (typeof v === 'string' && v.startsWith('resource:')) {
    const path = v.slice('resource:'.length);
    parseResourcePath(path);
    return { kind: 'resource', path };
  }
  throw new KbsError(
    'bad-scope',
    'scope must be "default", "repository:<name>" or "resource:<repository>/<type>/<tag>"',
  );
}

export function scopeName(s: PolicyScope): string {
  return s.kind === 'default'
    ? 'default'
    : s.kind === 'repository'
      ? `repository:${s.repository}`
      : `resource:${s.path}`;
}
