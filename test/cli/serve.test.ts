import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { offlineSource } from '../../src/attest/collateral/index.js';
import { confidentialFetch } from '../../src/client/fetch.js';
import { parseClientPolicy } from '../../src/client/policy.js';
import { servingKeysFrom } from '../../src/infer/app.js';
import { cliTimeouts, cloister, cloisterAsync, tempDir } from './run.js';

vi.setConfig(cliTimeouts());

/** `cloister serve` and `cloister chat` as a user runs them: real engines, a sealed GGUF and ONNX bundle. */
const dir = tempDir();
let server: ChildProcessWithoutNullStreams;
let url: string;
let log = '';

async function started(p: ChildProcessWithoutNullStreams): Promise<string> {
  return new Promise((resolve, reject) => {
    p.stderr.on('data', (d: Buffer) => {
      log += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(log);
      if (m) resolve(m[1]!);
    });
    p.on('exit', (code) => reject(new Error(`serve exited ${code}: ${log}`)));
  });
}

function ok(args: string[]) {
  const r = cloister(args, { cwd: dir });
  expect(r.code, r.stderr).toBe(0);
  return r;
}

beforeAll(async () => {
  ok(['model', 'tiny-gguf', 'tiny.gguf']);
  ok(['model', 'tiny-onnx', 'embed.tar']);
  ok(['keygen', '--kek', 'k.jwk', '--uri', 'kbs:///acme/models/kek']);
  ok(['seal', 'tiny.gguf', 'tiny.gguf.sealed', '--to', 'kbs:///acme/models/kek=k.jwk']);
  ok(['seal', 'embed.tar', 'embed.tar.sealed', '--to', 'kbs:///acme/models/kek=k.jwk']);
  server = cloisterAsync(
    [
      'serve',
      '--tee',
      'sample',
      '--key',
      'k.jwk',
      '--model',
      'tiny.gguf.sealed',
      '--model',
      'embed.tar.sealed',
      '--port',
      '0',
    ],
    { cwd: dir },
  ) as ChildProcessWithoutNullStreams;
  url = await started(server);
});

afterAll(() => {
  server?.kill('SIGTERM');
});

describe('cloister serve + cloister chat', () => {
  it('chat verifies, shows what it verified, streams a reply and keeps a verified receipt', () => {
    const r = cloister(
      [
        'chat',
        '--url',
        url,
        '--allow-sample',
        '--prompt',
        'Hello there',
        '--max-tokens',
        '8',
        '--receipts',
        'r.jsonl',
      ],
      {
        cwd: dir,
      },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.toString().trim().length).toBeGreaterThan(0);
    const digest = /sealed digest (sha256:[0-9a-f]{64})/.exec(log)![1]!;
    expect(r.stderr).toContain(`model       tiny  ${digest}  (gguf)`);
    expect(r.stderr).toContain('WARNING     the sample TEE is software only');
    // Not a terminal: no spinner while waiting for the first token, no control characters anywhere.
    expect(r.stderr).not.toContain('waiting for the first token');
    for (const out of [r.stderr, r.stdout.toString()]) {
      expect(out).not.toContain('\r');
      expect(out).not.toContain('\x1b');
    }
    const lines = readFileSync(join(dir, 'r.jsonl'), 'utf8').trim().split('\n');
    expect(lines).toHaveLength(1);
    const payload = JSON.parse(Buffer.from(JSON.parse(lines[0]!).jws.split('.')[1], 'base64url').toString());
    expect(payload.modelDigest).toBe(digest);
  });

  it('chat --model with an id the server does not serve names the ids it serves', () => {
    const r = cloister(['chat', '--url', url, '--allow-sample', '--model', 'llama', '--prompt', 'x'], {
      cwd: dir,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--model llama: the server serves tiny, embed$/m);
  });

  it('chat refuses a server its policy does not accept, sends nothing, exits 3', () => {
    const r = cloister(['chat', '--url', url, '--prompt', 'secret'], { cwd: dir });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain("REFUSED: the server runs in a 'sample' TEE");
    expect(r.stderr).toContain('Nothing was sent');
    writeFileSync(join(dir, 'typo.json'), '{"tee": ["sample"]}');
    const typo = cloister(['chat', '--url', url, '--policy', 'typo.json', '--prompt', 'x'], { cwd: dir });
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toContain("unknown policy key 'tee'");
  });

  it('the sealed ONNX bundle answers embeddings through the SDK', async () => {
    const f = confidentialFetch({
      url,
      policy: parseClientPolicy({ tees: ['sample'], minStatus: 'warning' }),
      collateral: offlineSource,
    });
    const res = await f(`${url}/v1/embeddings`, {
      method: 'POST',
      body: JSON.stringify({ model: 'embed', input: ['a b', 'c'] }),
    });
    const body = await res.json();
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.data).toHaveLength(2);
    expect(body.data[0].embedding).toHaveLength(32);
  });
});

describe('cloister serve refuses bad setups with one clear line', () => {
  it('no key source, a bare ONNX file, a file that is no model, the wrong key', () => {
    ok(['keygen', '--kek', 'other.jwk']);
    writeFileSync(join(dir, 'model.onnx'), Uint8Array.of(0x08, 0x08, 0x12, 0x00));
    writeFileSync(join(dir, 'notes.txt'), 'just text');
    ok(['seal', 'model.onnx', 'model.onnx.sealed', '--to', 'kbs:///acme/models/kek=k.jwk']);
    ok(['seal', 'notes.txt', 'notes.txt.sealed', '--to', 'kbs:///acme/models/kek=k.jwk']);
    // Read before Redis is reached: these are refused with or without one listening.
    const REDIS = ['--replay-redis', 'redis://127.0.0.1:6379'];
    const cases: [string[], RegExp][] = [
      [['--model', 'tiny.gguf.sealed'], /exactly one of --kbs URL .* or --key FILE/],
      [['--key', 'k.jwk', '--model', 'model.onnx.sealed'], /bare ONNX model.*tar -cf/],
      [['--key', 'k.jwk', '--model', 'notes.txt.sealed'], /neither a GGUF model nor an ONNX model bundle/],
      [['--key', 'other.jwk', '--model', 'tiny.gguf.sealed'], /key|recipient/i],
      [['--key', 'k.jwk', '--model', 'missing.sealed'], /missing\.sealed/],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', '--parallel', '0'],
        /--parallel must be an integer ≥ 1, not '0'/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', '--max-queued', 'lots'],
        /--max-queued must be an integer ≥ 0/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', '--request-timeout', '0'],
        /--request-timeout must be an integer ≥ 1/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', '--init-data', 'initdata.toml'],
        /--init-data is for the key broker: it needs --kbs URL/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', '--replay-redis', 'redis://127.0.0.1:6379'],
        /--replay-redis is for replicas that share keys: it needs --serving-keys/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', '--serving-keys', 'nope.json'],
        /--serving-keys needs --replay-redis URL: .* after a restart/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', ...REDIS, '--serving-keys', 'nope.json'],
        /cannot read --serving-keys nope\.json: ENOENT/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', ...REDIS, '--serving-keys', 'k.jwk'],
        /serving keys: not a cloister-serving-keys\/v1 document/,
      ],
      [
        ['--key', 'k.jwk', '--model', 'tiny.gguf.sealed', ...REDIS, '--serving-keys', 'kbs:///a/b/c'],
        /--serving-keys kbs:\/\/\/a\/b\/c needs --kbs URL/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = cloister(['serve', '--tee', 'sample', '--port', '0', ...args], { cwd: dir });
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /); // one line, no stack trace
    }
  });
});

describe('--serving-keys from a file', () => {
  it('is refused outside the sample TEE: the operator would hold the keys clients encrypt to', async () => {
    await expect(servingKeysFrom('keys.json', undefined, false, () => {})).rejects.toThrow(
      /a key file is for development in the sample TEE only/,
    );
  });
});
