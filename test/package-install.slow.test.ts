/**
 * The package as a user gets it: `npm pack` of this repository (after `npm run build`), installed
 * into a fresh project with no .npmrc and no lockfile, from npm's cache (CI runs this after `npm ci`,
 * which fills it). Every subpath of `exports` must import there, the `cloister` binary must run, and
 * none of the optional engines or drivers may have been pulled in; code that needs one must say how
 * to install it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  name: string;
  exports: Record<string, string>;
  peerDependencies: Record<string, string>;
};

let dir: string;
let project: string;
let installLog: string;

/** Runs a module in the fresh project; returns its exit status and output. */
function node(source: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', source], {
    cwd: project,
    encoding: 'utf8',
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

// Installing compiles better-sqlite3 where no prebuilt binary is reachable: minutes on a small machine.
beforeAll(() => {
  expect(existsSync('dist/client/index.js'), 'run `npm run build` first (npm run test:slow does)').toBe(true);
  dir = mkdtempSync(join(tmpdir(), 'cloister-pack-'));
  // The scripts would build again (prepare); dist/ is already built.
  const packed = JSON.parse(
    execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], {
      encoding: 'utf8',
    }),
  ) as { filename: string }[];
  const tarball = resolve(dir, packed[0]!.filename);
  project = join(dir, 'fresh');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), '{ "name": "fresh", "private": true, "type": "module" }\n');
  // --prefer-offline: npm's cache answers; the network only for what it lacks.
  const r = spawnSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], {
    cwd: project,
    encoding: 'utf8',
  });
  installLog = `${r.stdout}${r.stderr}`;
  expect(r.status, installLog).toBe(0);
  // What a user sees npm warn about (install scripts to approve, engines), for whoever reads CI's log.
  const warnings = installLog.split('\n').filter((line) => line.startsWith('npm warn'));
  if (warnings.length > 0) console.info(`npm install warned:\n${warnings.join('\n')}`);
}, 900_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the packed package in a fresh project', () => {
  it.each(Object.keys(pkg.exports))('imports %s', (sub) => {
    const specifier = `${pkg.name}${sub.slice(1)}`;
    const r = node(
      `const m = await import(${JSON.stringify(specifier)}); console.log(Object.keys(m).length);`,
    );
    expect(r.status, r.out).toBe(0);
    expect(Number(r.out.trim()), specifier).toBeGreaterThan(0);
  });

  it('runs `npx cloister --help`', () => {
    // `--no`: never fetch a package of that name; `--`: npx would otherwise take `--help` after `--no`.
    const r = spawnSync('npx', ['--no', '--', 'cloister', '--help'], { cwd: project, encoding: 'utf8' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^Usage: cloister/m);
  });

  it('pulls no inference engine or optional driver', () => {
    for (const name of Object.keys(pkg.peerDependencies)) {
      expect(existsSync(join(project, 'node_modules', name)), `${name} installed:\n${installLog}`).toBe(
        false,
      );
    }
  });

  it('code that needs an absent engine or driver says how to install it', () => {
    const dist = './node_modules/cloister/dist';
    const cases: [string, string, string][] = [
      [
        'pg',
        `const { openStore } = await import('${dist}/kbs/store/index.js');
         await openStore('postgres://127.0.0.1:1/kbs', { buildLogEntry: () => { throw new Error('unused'); } });`,
        'the PostgreSQL store (postgres:// URLs)',
      ],
      ['node-llama-cpp', `await import('${dist}/infer/engine/llama.js');`, 'serving GGUF models'],
      ['onnxruntime-node', `await import('${dist}/infer/engine/onnx.js');`, 'serving ONNX embedding models'],
      [
        '@redis/client',
        `const { RedisReplayGuard } = await import('${dist}/infer/replay-redis.js');
         await RedisReplayGuard.connect({ url: 'redis://127.0.0.1:1', windowMs: 1000, key: {} });`,
        'sharing replay protection (--replay-redis)',
      ],
    ];
    for (const [name, source, purpose] of cases) {
      const r = node(
        `try { ${source} console.log('loaded'); } catch (e) { console.log(e.code + ' ' + e.message); }`,
      );
      expect(r.out.trim(), name).toBe(
        `missing-dependency install ${name}: npm install ${name}@${pkg.peerDependencies[name]} (${purpose} needs it)`,
      );
    }
  });
});
