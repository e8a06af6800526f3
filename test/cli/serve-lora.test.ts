/**
 * `cloister serve --lora` and `--kbs-route`, and `cloister chat --adapter`, as a user runs them: the
 * flag forms, the refusals (one line each), and a served adapter a pinned chat accepts.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError } from 'commander';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { kbsRouteArg } from '../../src/cli/agent.js';
import { parseLoraSpec } from '../../src/cli/serve.js';
import { tinyLlamaGguf } from '../../src/infer/testing/gguf.js';
import { readGgufInfo, writeLoraAdapter } from '../../src/wire/index.js';
import { cliTimeouts, cloister, cloisterAsync, tempDir } from './run.js';

vi.setConfig(cliTimeouts());

describe('--lora FILE[:scale]', () => {
  it('takes the scale after the last colon only when it is a number', () => {
    expect(parseLoraSpec('a.sealed')).toEqual({ file: 'a.sealed', scale: 1 });
    expect(parseLoraSpec('a.sealed:0.5')).toEqual({ file: 'a.sealed', scale: 0.5 });
    expect(parseLoraSpec('a.sealed:2e0')).toEqual({ file: 'a.sealed', scale: 2 });
    expect(parseLoraSpec('/mnt/c:/x/a.sealed')).toEqual({ file: '/mnt/c:/x/a.sealed', scale: 1 });
    expect(parseLoraSpec('/v1:2/a.sealed')).toEqual({ file: '/v1:2/a.sealed', scale: 1 });
    expect(parseLoraSpec('dir:x/a.sealed:.25')).toEqual({ file: 'dir:x/a.sealed', scale: 0.25 });
  });

  it('refuses a scale outside [0.001, 1000] (float32 would make 1e-300 zero, 1e300 infinite), and a missing file', () => {
    for (const bad of [
      'a.sealed:0',
      'a.sealed:-1',
      'a.sealed:1e999',
      'a.sealed:NaN',
      'a.sealed:inf',
      'a.sealed:1e-300',
      'a.sealed:1e300',
      'a.sealed:0.0009',
      'a.sealed:1001',
    ])
      expect(() => parseLoraSpec(bad)).toThrow(
        /the scale after ':' must be a number from 0\.001 to 1000, got "[^"]+"$/,
      );
    expect(parseLoraSpec('a.sealed:0.001')).toEqual({ file: 'a.sealed', scale: 0.001 });
    expect(parseLoraSpec('a.sealed:1000')).toEqual({ file: 'a.sealed', scale: 1000 });
    expect(() => parseLoraSpec('a.sealed:')).toThrow(/give FILE or FILE:SCALE/);
    expect(() => parseLoraSpec(':1')).toThrow(/no adapter file before ':'/);
  });
});

describe('--kbs-route REPO=URL', () => {
  it('collects routes, one per repository', () => {
    const one = kbsRouteArg('acme=https://kbs.acme.example:8080');
    expect(kbsRouteArg('globex=http://127.0.0.1:1', one)).toEqual([
      { repo: 'acme', url: 'https://kbs.acme.example:8080' },
      { repo: 'globex', url: 'http://127.0.0.1:1' },
    ]);
    expect(() => kbsRouteArg('acme=https://other', one)).toThrow(/routed twice/);
    expect(() => kbsRouteArg('https://kbs.acme.example')).toThrow(InvalidArgumentError);
    expect(() => kbsRouteArg('a/b=https://x')).toThrow(/REPO=URL/);
    // '.' and '..' (any leading '.'): the broker's URL would resolve them, routing goes by the name.
    for (const bad of ['.', '..', '.acme'])
      expect(() => kbsRouteArg(`${bad}=https://x`), bad).toThrow(/not starting with '\.'/);
    expect(kbsRouteArg('acme.corp=https://x')).toEqual([{ repo: 'acme.corp', url: 'https://x' }]);
    expect(() => kbsRouteArg('acme=kbs.acme.example')).toThrow(/not a URL/);
    expect(() => kbsRouteArg('acme=ftp://kbs.acme.example')).toThrow(/must be http\(s\)/);
  });
});

describe('cloister serve --lora and cloister chat --adapter', () => {
  const dir = tempDir();
  let server: ChildProcessWithoutNullStreams | undefined;
  afterAll(() => {
    server?.kill('SIGTERM');
  });
  const ok = (args: string[]) => {
    const r = cloister(args, { cwd: dir });
    expect(r.code, r.stderr).toBe(0);
    return r;
  };

  it('refuses --lora without exactly one model, and --kbs-route without --kbs, in one line', () => {
    const base = tinyLlamaGguf({ seed: 4, context: 256 }).bytes();
    writeFileSync(join(dir, 'base.gguf'), base);
    const info = readGgufInfo(base);
    const [inputs, outputs] = info.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!.dims as [
      number,
      number,
    ];
    const pair = { target: 'blk.0.attn_q.weight', inputs, outputs, rank: 2 };
    writeFileSync(
      join(dir, 'adapter.gguf'),
      writeLoraAdapter({
        architecture: 'llama',
        alpha: 2,
        name: 'a',
        pairs: [
          { ...pair, a: new Float32Array(2 * inputs).fill(0.3), b: new Float32Array(outputs * 2).fill(0.3) },
        ],
      }),
    );
    ok(['keygen', '--kek', 'k.jwk', '--uri', 'kbs:///acme/models/kek']);
    for (const f of ['base.gguf', 'adapter.gguf'])
      ok(['seal', f, `${f}.sealed`, '--to', 'kbs:///acme/models/kek=k.jwk']);
    const cases: [string[], RegExp][] = [
      [
        [
          '--key',
          'k.jwk',
          '--model',
          'base.gguf.sealed',
          '--model',
          'base.gguf.sealed',
          '--lora',
          'adapter.gguf.sealed',
        ],
        /--lora applies to one base model: give exactly one --model \(a GGUF base\), not 2$/m,
      ],
      [
        ['--key', 'k.jwk', '--model', 'base.gguf.sealed', '--lora', 'adapter.gguf.sealed:-2'],
        /the scale after ':' must be a number from 0\.001 to 1000, got "-2"$/m,
      ],
      [
        ['--key', 'k.jwk', '--model', 'base.gguf.sealed', '--kbs-route', 'acme=http://127.0.0.1:1'],
        /--kbs-route sends some keys to another key broker: it needs --kbs URL$/m,
      ],
      [
        ['--key', 'k.jwk', '--model', 'base.gguf.sealed', '--lora', 'base.gguf.sealed'],
        /base\.gguf\.sealed: not a LoRA adapter/,
      ],
    ];
    for (const [args, why] of cases) {
      const r = cloister(['serve', '--tee', 'sample', '--port', '0', '--threads', '1', ...args], {
        cwd: dir,
      });
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stderr).toMatch(why);
      // The refusal is the last line, and only one line.
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(why);
    }
  });

  it('serves base + adapter; chat shows the adapter, and --adapter pins it', async () => {
    server = cloisterAsync(
      [
        'serve',
        '--tee',
        'sample',
        '--key',
        'k.jwk',
        '--model',
        'base.gguf.sealed',
        '--lora',
        'adapter.gguf.sealed:0.5',
        '--port',
        '0',
        '--threads',
        '1',
      ],
      { cwd: dir },
    ) as ChildProcessWithoutNullStreams;
    let log = '';
    const url = await new Promise<string>((resolve, reject) => {
      server!.stderr.on('data', (d: Buffer) => {
        log += d.toString();
        const m = /listening on (http:\/\/\S+)/.exec(log);
        if (m) resolve(m[1]!);
      });
      server!.on('exit', (code) => reject(new Error(`serve exited ${code}: ${log}`)));
    });
    const digest = /adapter adapter\.gguf\.sealed: sealed digest (sha256:[0-9a-f]{64}), scale 0\.5/.exec(
      log,
    )![1]!;
    const chat = (extra: string[]) =>
      cloister(['chat', '--url', url, '--allow-sample', '--prompt', 'hi', '--max-tokens', '4', ...extra], {
        cwd: dir,
      });
    const pinned = chat(['--adapter', `${digest}@0.5`]);
    expect(pinned.code, pinned.stderr).toBe(0);
    expect(pinned.stderr).toContain(`  adapter   ${digest}  scale 0.5  (LoRA, on base)`);
    expect(pinned.stderr).toContain('exactly 1 pinned adapter(s)');
    const unpinned = chat([]);
    expect(unpinned.code, unpinned.stderr).toBe(0);
    expect(unpinned.stderr).toContain('carries 1 LoRA adapter(s) the policy does not pin');
    // The scale is pinned too: a digest alone means scale 1.
    const scale1 = chat(['--adapter', digest]);
    expect(scale1.code).toBe(3);
    expect(scale1.stderr).toContain(
      `REFUSED: the model 'base' carries LoRA adapter(s) ${digest} (scale 0.5); the policy wants exactly ${digest} (scale 1)`,
    );
    const wrong = chat(['--adapter', `sha256:${'0'.repeat(64)}`]);
    expect(wrong.code).toBe(3);
    expect(wrong.stderr).toMatch(/REFUSED: the model 'base' carries LoRA adapter\(s\) sha256:/);
  });
});
