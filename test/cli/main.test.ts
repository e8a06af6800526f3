/** The `cloister` binary's own ends (bin/cloister.js → runBinary), apart from any one verb. */
import { spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';

const MAIN = new URL('../../dist/cli/main.js', import.meta.url).href;

it('a command that never finishes exits non-zero with one line, not 0 in silence', () => {
  // A promise that nothing will ever settle: the event loop drains while the command is unfinished.
  const script = `import { runBinary } from ${JSON.stringify(MAIN)}; runBinary(() => new Promise(() => {}));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr).toBe(
    'cloister: internal error: the command stopped before finishing (nothing was left to wait for)\n',
  );
});

it('a finished command sets the exit status and reports a failure in one line', () => {
  for (const [body, status, stderr] of [
    ['async () => 3', 3, ''],
    ["async () => { throw new Error('it broke'); }", 1, 'cloister: it broke\n'],
  ] as const) {
    const script = `import { runBinary } from ${JSON.stringify(MAIN)}; runBinary(${body});`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status).toBe(status);
    expect(r.stderr).toBe(stderr);
  }
});
