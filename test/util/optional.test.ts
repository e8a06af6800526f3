import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  assertInstalled,
  importOptional,
  MissingDependencyError,
  requireOptional,
} from '../../src/util/optional/node.js';

const ABSENT = 'cloister-test-no-such-package';
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  optionalDependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
  peerDependenciesMeta: Record<string, { optional?: boolean }>;
};

describe('optional dependencies', () => {
  it('an absent package is a missing-dependency error that says how to install it, in one line', async () => {
    const expected = {
      code: 'missing-dependency',
      dependency: ABSENT,
      message: `install ${ABSENT}: npm install ${ABSENT} (testing needs it)`,
    };
    const imported = importOptional(ABSENT, 'testing');
    await expect(imported).rejects.toBeInstanceOf(MissingDependencyError);
    await expect(imported).rejects.toMatchObject(expected);
    expect(() => requireOptional(ABSENT, 'testing')).toThrow(MissingDependencyError);
    expect(() => requireOptional(ABSENT, 'testing')).toThrow(expected.message);
    expect(() => assertInstalled(ABSENT, 'testing')).toThrow(expected.message);
  });

  it('loads a package that is there, ESM or CommonJS', async () => {
    const pg = requireOptional<{ Pool: unknown }>('pg', 'testing');
    expect(typeof pg.Pool).toBe('function');
    const llama = await importOptional<{ getLlama: unknown }>('node-llama-cpp', 'testing');
    expect(typeof llama.getLlama).toBe('function');
    expect(() => assertInstalled('onnxruntime-node', 'testing')).not.toThrow();
    // ESM-only packages do not resolve for require(); they are there all the same.
    expect(() => assertInstalled('node-llama-cpp', 'testing')).not.toThrow();
  });

  it('a package that is there but fails to load keeps its own error', async () => {
    await expect(importOptional('pg/no-such-file.js', 'testing')).rejects.not.toBeInstanceOf(
      MissingDependencyError,
    );
    expect(() => requireOptional('pg/no-such-file.js', 'testing')).toThrow(/no-such-file/);
    expect(() => requireOptional('pg/no-such-file.js', 'testing')).not.toThrow(MissingDependencyError);
  });

  it('the engines and drivers loaded through it are optional peers (kept as devDependencies for the tests) or optional dependencies', () => {
    const optional = [
      '@huggingface/transformers',
      '@redis/client',
      'node-llama-cpp',
      'onnxruntime-node',
      'pg',
    ];
    expect(Object.keys(pkg.peerDependencies).sort()).toEqual(optional);
    for (const name of optional) {
      expect(pkg.peerDependenciesMeta[name]?.optional, name).toBe(true);
      expect(pkg.devDependencies[name], name).toBe(pkg.peerDependencies[name]);
      expect(pkg.dependencies[name], name).toBeUndefined();
    }
    // The broker's default store is installed with the package, but its native build may fail.
    expect(Object.keys(pkg.optionalDependencies)).toEqual(['better-sqlite3']);
    expect(pkg.dependencies['better-sqlite3']).toBeUndefined();
  });
});
