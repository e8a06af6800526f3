import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { DEFAULT_AGENT_SOCKET } from '../../src/tee/defaults.js';
import { devDir, gramineDir, tempDir } from '../tee/evidence/helpers.js';
import { cliTimeouts } from './run.js';

vi.setConfig(cliTimeouts());

// `cloister agent detect` as users run it: `node bin/cloister.js` over the compiled dist/. PATH is
// emptied so that an nvidia-smi on the test machine cannot change the answers.
function detect(...args: string[]) {
  const r = spawnSync(process.execPath, ['bin/cloister.js', 'agent', 'detect', ...args], {
    encoding: 'utf8',
    env: { ...process.env, PATH: tempDir() },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(() => {
  if (!existsSync('dist/cli/agent.js'))
    execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
});

describe('cloister agent detect', () => {
  it('nothing found: exit 1, one line on stderr, every check listed, probe entry removed', () => {
    const base = tempDir();
    const tsm = path.join(base, 'tsm');
    mkdirSync(tsm);
    const r = detect(
      '--tsm-root',
      tsm,
      '--gramine-root',
      path.join(base, 'attestation'),
      '--dev-root',
      devDir(),
    );
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      'cloister agent detect: no TEE found (no configfs-tsm provider, no Gramine /dev/attestation; see the reasons above)\n',
    );
    expect(r.out).toMatch(/^TEE: none found\nchecked:\n/);
    // A plain folder is not configfs: the probe entry has no provider file.
    expect(r.out).toMatch(
      new RegExp(`- configfs-tsm: ${tsm} exists but a probe entry gave no provider: .*provider`),
    );
    expect(r.out).toContain(`- Gramine: ${base}/attestation does not exist`);
    expect(r.out).toMatch(/- sample: not used \(allow it with --allow-sample/);
    expect(r.out).toMatch(/GPUs: none\n {2}- GPU: no .*nvidia<N> device nodes/);
    expect(readdirSync(tsm)).toEqual([]);
  });

  it('--json --allow-sample: exit 0 with the insecure sample TEE and the reasons', () => {
    const base = tempDir();
    const r = detect(
      '--json',
      '--allow-sample',
      '--tsm-root',
      path.join(base, 'none'),
      '--gramine-root',
      path.join(base, 'none'),
      '--dev-root',
      devDir('nvidia0', 'nvidia1', 'nvidiactl'),
    );
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    const doc = JSON.parse(r.out);
    expect(doc).toMatchObject({ found: true, kind: 'sample', insecure: true });
    expect(doc.reasons).toHaveLength(3);
    expect(doc.reasons[0]).toMatch(/does not exist/);
    expect(doc.gpus).toMatchObject({ count: 2, source: expect.stringMatching(/unavailable/) });
    expect(doc.gpus.devices.map((d: string) => path.basename(d))).toEqual(['nvidia0', 'nvidia1']);
    expect(doc.gpus.reasons.join('\n')).toMatch(/nvidia-smi not found on PATH/);
  });

  it('finds SGX through a Gramine attestation folder (exit 0)', () => {
    const base = tempDir();
    const gramine = gramineDir('dcap');
    const r = detect(
      '--tsm-root',
      path.join(base, 'none'),
      '--gramine-root',
      gramine,
      '--dev-root',
      devDir(),
    );
    expect(r.code).toBe(0);
    expect(r.out).toMatch(new RegExp(`^TEE: Intel SGX \\(sgx\\) via Gramine ${gramine}\n`));
    expect(r.out).toContain(`- Gramine: ${gramine}/attestation_type is "dcap": Intel SGX`);
  });

  it('--help names the options', () => {
    const r = spawnSync(process.execPath, ['bin/cloister.js', 'agent', 'detect', '--help'], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    for (const o of ['--json', '--tsm-root', '--allow-sample', '--gramine-root', '--dev-root'])
      expect(r.stdout).toContain(o);
  });
});

describe('cloister agent serve: the socket path', () => {
  it('one default, the same in --help, README.md and docs/', () => {
    const r = spawnSync(process.execPath, ['bin/cloister.js', 'agent', 'serve', '--help'], {
      encoding: 'utf8',
    });
    // Commander wraps the option column; the default is read with the wrapping undone.
    expect(r.stdout.replace(/\s+/g, ' ')).toContain(`(default: "${DEFAULT_AGENT_SOCKET}")`);
    const docs = [
      'README.md',
      ...readdirSync('docs', { recursive: true, encoding: 'utf8' }).map((f) => path.join('docs', f)),
    ];
    const named = docs
      .filter((f) => f.endsWith('.md'))
      .flatMap((f) =>
        [...readFileSync(f, 'utf8').matchAll(/\/run\/[\w./-]*\.sock\b/g)].map((m) => `${f}: ${m[0]}`),
      );
    expect(named.length).toBeGreaterThan(1);
    expect(named.filter((n) => !n.endsWith(`: ${DEFAULT_AGENT_SOCKET}`))).toEqual([]);
  });

  it('a missing socket folder: exit 1, one line naming the folder and what to do', () => {
    const missing = path.join(tempDir(), 'missing');
    const r = spawnSync(
      process.execPath,
      [
        'bin/cloister.js',
        'agent',
        'serve',
        '--tee',
        'sample',
        '--kbs',
        'http://127.0.0.1:9',
        '--socket',
        path.join(missing, 'x.sock'),
      ],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(1);
    expect(r.stderr.split('\n').filter((l) => !l.includes('WARNING') && !l.includes('TEE: sample'))).toEqual([
      `cloister: ${missing}: the folder for --socket ${path.join(missing, 'x.sock')} does not exist; create it (mkdir -p ${missing}) or choose another --socket`,
      '',
    ]);
  });
});

describe('the key broker from the environment', () => {
  it('run takes CLOISTER_KBS_URL when --kbs is not given, as the admin verbs do', () => {
    const r = spawnSync(
      process.execPath,
      ['bin/cloister.js', 'run', '--tee', 'sample', '--retries', '1', '--', 'true'],
      { encoding: 'utf8', env: { ...process.env, CLOISTER_KBS_URL: 'http://127.0.0.1:1' } },
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('key broker at http://127.0.0.1:1 unreachable');
  });

  it('without either, --kbs is a missing option (usage, 64)', () => {
    const env = { ...process.env };
    delete env.CLOISTER_KBS_URL;
    const r = spawnSync(process.execPath, ['bin/cloister.js', 'run', '--tee', 'sample', '--', 'true'], {
      encoding: 'utf8',
      env,
    });
    expect(r.status).toBe(64);
    expect(r.stderr).toContain("required option '--kbs <url>' not specified");
  });
});
