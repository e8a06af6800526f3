/** The `cloister` binary's own ends (bin/cloister.js → runBinary), apart from any one verb. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect, it, vi } from 'vitest';
import { cliTimeouts, cloister, cloisterAsync } from './run.js';

vi.setConfig(cliTimeouts());

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

it('a failure is one line of plain text, whatever text from elsewhere its message carries', () => {
  const script = `import { runBinary } from ${JSON.stringify(MAIN)};
runBinary(async () => { throw new Error('refused: \\ncloister: key released\\x1b]0;owned\\x07\\r'); });`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  expect(r.status).toBe(1);
  expect(r.stderr).toBe('cloister: refused: \\ncloister: key released\\u001b]0;owned\\u0007\\r\n');
});

it("a broker's error page is reported in one line, not spread over the operator's terminal", async () => {
  // A proxy in front of the broker answers with an HTML page: the JSON parse error quotes it.
  const server = createServer((_req, res) => {
    res.writeHead(502, { 'content-type': 'text/html' });
    res.end('<p>\n\x1b[2J\n</p>');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as AddressInfo;
    const child = cloisterAsync([
      'kbs',
      'resource',
      'ls',
      '--url',
      `http://127.0.0.1:${port}`,
      '--token',
      't',
    ]);
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(code).toBe(1);
    expect(stderr.split('\n')).toEqual([expect.stringContaining('"<p>\\n\\u001b[2J\\n</p>"'), '']);
  } finally {
    server.close();
  }
});

it('--version and -V print the version package.json names, and exit 0', () => {
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
  for (const flag of ['--version', '-V']) {
    const r = cloister([flag]);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(`${version}\n`);
  }
});

it('a command line that cannot be parsed is a usage error: exit 64 (EX_USAGE), with the reason', () => {
  for (const args of [
    ['--no-such-flag'],
    ['no-such-verb'],
    ['verify'],
    ['verify', 'e.json', '--tee', 'nope'],
    ['agent', 'serve', '--tee', 'sample'],
  ]) {
    const r = cloister(args);
    expect(r.code, args.join(' ')).toBe(64);
    expect(r.stderr, args.join(' ')).toMatch(/^error: /);
  }
  // No verb at all: the help goes to stderr, and the status says nothing was done.
  expect(cloister([]).code).toBe(64);
});
