import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { decodeServingKeys } from '../../src/infer/serving-keys.js';
import { cliTimeout, cliTimeouts, cloister, cloisterAsync, smallTmpfs, tempDir } from './run.js';

vi.setConfig(cliTimeouts());

let dir: string;
const plain = randomBytes(3 * 1024 * 1024 + 17);
const at = (f: string) => join(dir, f);
const KBS = 'kbs:///owner/models/kek1';

beforeAll(() => {
  dir = tempDir();
  writeFileSync(at('model.bin'), plain);
  expect(cloister(['keygen', '--kek', at('owner.kek'), '--uri', KBS]).code).toBe(0);
  expect(cloister(['keygen', '--hpke', at('broker.key'), '--pub', at('broker.pub')]).code).toBe(0);
  expect(cloister(['keygen', '--kek', at('other.kek')]).code).toBe(0);
  const r = cloister([
    'seal',
    '--to',
    `${KBS}=${at('owner.kek')}`,
    '--to',
    `hpke:${at('broker.pub')}`,
    at('model.bin'),
    at('model.sealed'),
  ]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
});

/** No stray temporaries and no plaintext output may be left after a failure. */
function leftovers(): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.tmp') || f === 'out.bin');
}

function expectOneLineError(r: { code: number | null; stderr: string }, pattern: RegExp): void {
  expect(r.code).not.toBe(0);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(pattern);
  expect(leftovers()).toEqual([]);
}

describe('cloister keygen', () => {
  it('writes secret keys mode 0600 and the public key readable', () => {
    expect(statSync(at('owner.kek')).mode & 0o777).toBe(0o600);
    expect(statSync(at('broker.key')).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(at('broker.pub'), 'utf8'))).not.toHaveProperty('d');
  });
  it('refuses to overwrite a key without --force', () => {
    expectOneLineError(cloister(['keygen', '--kek', at('owner.kek')]), /already exists/);
  });
  it('--force replaces an existing file, so a secret key ends 0600 whatever the old mode', () => {
    for (const f of ['k.kek', 'h.key', 'h.pub']) {
      writeFileSync(at(f), 'old');
      chmodSync(at(f), 0o644);
    }
    expect(cloister(['keygen', '--force', '--kek', at('k.kek')]).code).toBe(0);
    expect(cloister(['keygen', '--force', '--hpke', at('h.key'), '--pub', at('h.pub')]).code).toBe(0);
    expect(statSync(at('k.kek')).mode & 0o777).toBe(0o600);
    expect(statSync(at('h.key')).mode & 0o777).toBe(0o600);
    expect(statSync(at('h.pub')).mode & 0o777).toBe(0o644);
    expect(JSON.parse(readFileSync(at('k.kek'), 'utf8'))).toHaveProperty('k');
  });
  it('--serving writes the replicas’ shared keys, 0600, with the key id asked for', async () => {
    const r = cloister([
      'keygen',
      '--serving',
      at('serving.json'),
      '--key-id',
      '9',
      '--for',
      at('model.sealed'),
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/wrote serving keys .*serving\.json \(OHTTP key id 9\)/);
    expect(statSync(at('serving.json')).mode & 0o777).toBe(0o600);
    const keys = await decodeServingKeys(readFileSync(at('serving.json')), 'file:serving.json');
    expect(keys.gateway.config.keyId).toBe(9);
    const digest = `sha256:${createHash('sha256')
      .update(readFileSync(at('model.sealed')))
      .digest('hex')}`;
    expect(keys).toMatchObject({ models: [{ id: 'model.bin', digest }], plaintextAllowed: false });
    expectOneLineError(cloister(['keygen', '--serving', at('s2.json')]), /needs --for MODEL\.sealed/);
    expectOneLineError(cloister(['keygen', '--serving', at('s2.json'), '--key-id', '256']), /0-255/);
    expectOneLineError(cloister(['keygen', '--serving', at('s2.json'), '--kek', at('k2')]), /exactly one of/);
  });
});

describe('cloister seal / unseal', () => {
  it('round-trips with either recipient key', () => {
    for (const key of ['owner.kek', 'broker.key']) {
      const r = cloister(['unseal', '--key', at(key), at('model.sealed'), '-']);
      expect(r.code).toBe(0);
      expect(r.stdout.equals(plain)).toBe(true);
    }
  });

  it('round-trips through pipes and worker threads', () => {
    const sealed = cloister(['seal', '--workers', '2', '--to', `hpke:${at('broker.pub')}`, '-', '-'], {
      input: plain,
    });
    expect(sealed.code).toBe(0);
    const opened = cloister(['unseal', '--workers', '2', '--key', at('broker.key'), '-', '-'], {
      input: sealed.stdout,
    });
    expect(opened.code).toBe(0);
    expect(opened.stdout.equals(plain)).toBe(true);
  });

  it('reads a byte range', () => {
    const r = cloister([
      'unseal',
      '--key',
      at('owner.kek'),
      '--range',
      '1048570-1048600',
      at('model.sealed'),
      '-',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout.equals(plain.subarray(1048570, 1048600))).toBe(true);
  });

  it('writes a byte range to a file as 0600, replacing an existing 0644 file with --force', () => {
    writeFileSync(at('range.out'), 'old');
    chmodSync(at('range.out'), 0o644);
    const args = ['unseal', '--key', at('owner.kek'), '--range', '100-2500000', at('model.sealed')];
    expectOneLineError(cloister([...args, at('range.out')]), /already exists \(use --force/);
    expect(cloister([...args, '--force', at('range.out')]).code).toBe(0);
    expect(statSync(at('range.out')).mode & 0o777).toBe(0o600);
    expect(readFileSync(at('range.out')).equals(plain.subarray(100, 2500000))).toBe(true);
  });

  it('refuses a worker count that is not a whole number, before any output', () => {
    for (const [bad, out] of [
      ['abc', at('out.bin')],
      ['2x', '-'],
    ] as const) {
      const seal = cloister([
        'seal',
        '--workers',
        bad,
        '--to',
        `hpke:${at('broker.pub')}`,
        at('model.bin'),
        out,
      ]);
      expectOneLineError(seal, new RegExp(`--workers must be an integer ≥ 0, not '${bad}'`));
      expect(seal.stdout.length).toBe(0);
      const unseal = cloister([
        'unseal',
        '--workers',
        bad,
        '--key',
        at('owner.kek'),
        at('model.sealed'),
        out,
      ]);
      expectOneLineError(unseal, /--workers must be an integer/);
      expect(unseal.stdout.length).toBe(0);
    }
  });

  it('refuses a key that is not a recipient', () => {
    expectOneLineError(
      cloister(['unseal', '--key', at('other.kek'), at('model.sealed'), at('out.bin')]),
      /does not open this file/,
    );
  });

  it('refuses a public key for unsealing', () => {
    expectOneLineError(
      cloister(['unseal', '--key', at('broker.pub'), at('model.sealed'), at('out.bin')]),
      /public key/,
    );
  });

  it('refuses a corrupted file and leaves no plaintext behind', () => {
    const bad = readFileSync(at('model.sealed'));
    bad[bad.length - 100] ^= 1;
    writeFileSync(at('bad.sealed'), bad);
    expectOneLineError(
      cloister(['unseal', '--key', at('owner.kek'), at('bad.sealed'), at('out.bin')]),
      /chunk 2 failed authentication/,
    );
  });

  it('refuses a truncated file', () => {
    writeFileSync(at('short.sealed'), readFileSync(at('model.sealed')).subarray(0, 2 * 1024 * 1024));
    expectOneLineError(
      cloister(['unseal', '--key', at('owner.kek'), at('short.sealed'), at('out.bin')]),
      /truncated/,
    );
  });

  it('refuses a file that is not sealed', () => {
    expectOneLineError(
      cloister(['unseal', '--key', at('owner.kek'), at('model.bin'), at('out.bin')]),
      /not a Cloister sealed file/,
    );
    expectOneLineError(cloister(['inspect', at('model.bin')]), /not a Cloister sealed file/);
  });

  it('refuses an unknown format version', () => {
    const v = readFileSync(at('model.sealed'));
    v[9] = 7;
    writeFileSync(at('v7.sealed'), v);
    expectOneLineError(
      cloister(['unseal', '--key', at('owner.kek'), at('v7.sealed'), at('out.bin')]),
      /version 7 is not supported/,
    );
  });

  it('reports a missing input file', () => {
    expectOneLineError(
      cloister(['unseal', '--key', at('owner.kek'), at('nope.sealed'), at('out.bin')]),
      /nope.sealed: no such file/,
    );
    expectOneLineError(
      cloister(['seal', '--to', `hpke:${at('broker.pub')}`, at('nope'), at('out.bin')]),
      /nope: no such file/,
    );
    expectOneLineError(
      cloister(['unseal', '--key', at('nope.kek'), at('model.sealed'), at('out.bin')]),
      /cannot read key file/,
    );
  });

  it('refuses to overwrite an existing output without --force', () => {
    expectOneLineError(
      cloister(['seal', '--to', `hpke:${at('broker.pub')}`, at('model.bin'), at('model.sealed')]),
      /already exists \(use --force/,
    );
    const r = cloister(['unseal', '--force', '--key', at('owner.kek'), at('model.sealed'), at('model.bin')]);
    expect(r.code).toBe(0);
  });

  it('refuses malformed recipients and key files', () => {
    writeFileSync(at('junk.kek'), 'not json');
    expectOneLineError(
      cloister(['seal', '--to', `${KBS}=${at('junk.kek')}`, at('model.bin'), at('x.sealed')]),
      /not a JSON Web Key/,
    );
    expectOneLineError(
      cloister(['seal', '--to', `kbs:///bad uri=${at('owner.kek')}`, at('model.bin'), at('x.sealed')]),
      /not a key broker resource URI/,
    );
    expectOneLineError(cloister(['seal', '--to', `${KBS}`, at('model.bin'), at('x.sealed')]), /=FILE/);
  });

  it('refuses a KEK file whose kid names another resource, naming both, unless --ignore-kid', () => {
    const other = 'kbs:///acme/models/kek1';
    const r = cloister(['seal', '--to', `${other}=${at('owner.kek')}`, at('model.bin'), at('x.sealed')]);
    expectOneLineError(
      r,
      /owner\.kek is the key kbs:\/\/\/owner\/models\/kek1, not kbs:\/\/\/acme\/models\/kek1/,
    );
    expect(r.stderr).toMatch(/--ignore-kid/);
    const ok = cloister([
      'seal',
      '--ignore-kid',
      '--to',
      `${other}=${at('owner.kek')}`,
      at('model.bin'),
      at('renamed.sealed'),
    ]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(cloister(['inspect', at('renamed.sealed')]).stdout.toString()).toContain(`kbs   ${other}`);
    // A KEK without a kid (keygen --kek without --uri) names no resource, so any URI is taken.
    const plain = cloister([
      'seal',
      '--to',
      `${other}=${at('other.kek')}`,
      at('model.bin'),
      at('plain.sealed'),
    ]);
    expect(plain.code).toBe(0);
  });

  it('exits non-zero on a later failure while unsealing to a pipe, after releasing verified chunks', () => {
    const big = randomBytes(10 * 1024 * 1024);
    const sealed = cloister(['seal', '--to', `hpke:${at('broker.pub')}`, '-', '-'], { input: big }).stdout;
    sealed[sealed.length - 100] ^= 1;
    const r = cloister(['unseal', '--key', at('broker.key'), '-', '-'], { input: sealed });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/chunk 9 failed authentication/);
    expect(r.stdout.length).toBeGreaterThanOrEqual(4 * 1024 * 1024);
    expect(r.stdout.length).toBeLessThan(big.length);
    expect(r.stdout.equals(big.subarray(0, r.stdout.length))).toBe(true);
  });

  it('removes the temporary output when interrupted', async () => {
    const child = cloisterAsync(['seal', '--to', `hpke:${at('broker.pub')}`, '-', at('interrupted.sealed')]);
    child.stdin.on('error', () => {}); // the child is killed while its stdin is open: EPIPE is expected
    child.stdin.write(randomBytes(1024 * 1024));
    const started = Date.now();
    while (!readdirSync(dir).some((f) => f.endsWith('.tmp')) && Date.now() - started < cliTimeout(15_000)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(readdirSync(dir).some((f) => f.endsWith('.tmp'))).toBe(true);
    child.kill('SIGTERM');
    const code = await new Promise((r) => child.on('exit', r));
    expect(code).toBe(143);
    expect(readdirSync(dir).filter((f) => f.includes('interrupted'))).toEqual([]);
  });

  it('a later run removes the plaintext temporary of an unseal killed with SIGKILL', async () => {
    const child = cloisterAsync(['unseal', '--key', at('owner.kek'), '-', at('killed.out')]);
    child.stdin.on('error', () => {}); // killed while its stdin is open
    child.stdin.write(readFileSync(at('model.sealed')).subarray(0, 2 * 1024 * 1024));
    const temporaries = () => readdirSync(dir).filter((f) => f.startsWith('.killed.out.'));
    const started = Date.now();
    while (temporaries().length === 0 && Date.now() - started < cliTimeout(15_000)) {
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    // Nothing runs on SIGKILL: the temporary stays, named for its (now dead) writer.
    expect(temporaries()).toEqual([
      expect.stringMatching(new RegExp(`^\\.killed\\.out\\.${child.pid}-[0-9a-f]{12}\\.tmp$`)),
    ]);
    const r = cloister(['unseal', '--key', at('owner.kek'), at('model.sealed'), at('killed.out')]);
    expect(r.code).toBe(0);
    expect(temporaries()).toEqual([]);
    expect(readFileSync(at('killed.out')).equals(plain)).toBe(true);
  });
});

describe('output to stdout that fails', () => {
  const commands = () => [
    ['unseal', '--key', at('owner.kek'), at('model.sealed'), '-'],
    ['unseal', '--key', at('owner.kek'), '--range', `0-${plain.length}`, at('model.sealed'), '-'],
    ['inspect', at('model.sealed')],
  ];

  it('a full device (/dev/full) is one line and a non-zero status', () => {
    const full = openSync('/dev/full', 'w');
    try {
      for (const args of commands()) {
        expectOneLineError(
          cloister(args, { stdout: full }),
          /^cloister: cannot write to standard output: no space left on device$/m,
        );
      }
    } finally {
      closeSync(full);
    }
  });

  it('a reader that went away (| head -c 10) ends it quietly with status 141, as SIGPIPE would', async () => {
    for (const args of commands().slice(0, 2)) {
      const child = cloisterAsync(args);
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      // 3 MiB of plaintext cannot fit in a pipe: the child is still writing when the reader leaves.
      child.stdout.once('data', () => child.stdout.destroy());
      const code = await new Promise((r) => child.on('exit', r));
      expect(stderr).toBe('');
      expect(code).toBe(141);
    }
  });
});

describe('on a full disk', () => {
  const fs = smallTmpfs(1024);
  const skip = 'skip' in fs ? fs.skip : undefined;
  afterAll(() => {
    if (!('skip' in fs)) fs.unmount();
  });
  const tiny = (f: string) => ('skip' in fs ? f : join(fs.dir, f));
  const files = () => readdirSync(tiny('.')).filter((f) => f !== 'filler');

  it.skipIf(skip)(`unseal --range leaves no partial plaintext${skip ? ` (skipped: ${skip})` : ''}`, () => {
    const r = cloister([
      'unseal',
      '--key',
      at('owner.kek'),
      '--range',
      `0-${plain.length}`,
      at('model.sealed'),
      tiny('out.bin'),
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`cloister: ${tiny('out.bin')}: no space left on device\n`);
    expect(files()).toEqual([]);
  });

  it.skipIf(skip)(`key commands leave no empty key file behind${skip ? ` (skipped: ${skip})` : ''}`, () => {
    // Fill the disk up to the last block.
    expect(() => writeFileSync(tiny('filler'), Buffer.alloc(2 * 1024 * 1024))).toThrow(/ENOSPC/);
    for (const args of [
      ['keygen', '--kek', tiny('k.kek')],
      ['keygen', '--hpke', tiny('h.key'), '--pub', tiny('h.pub')],
      ['log', 'keygen', '--name', 'example/log', '--out', tiny('log.jwk')],
      ['kbs', 'admin-key', '--out', tiny('admin.jwk'), '--pub', tiny('admin.pub.jwk')],
    ]) {
      const r = cloister(args);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/no space left on device|ENOSPC/);
      expect(files()).toEqual([]);
    }
    // The next try, with space again, is not blocked by anything left from the failed one.
    rmSync(tiny('filler'));
    expect(cloister(['keygen', '--kek', tiny('k.kek')]).code).toBe(0);
    expect(statSync(tiny('k.kek')).mode & 0o777).toBe(0o600);
  });
});

describe('cloister inspect', () => {
  it('shows the header without secrets', () => {
    const r = cloister(['inspect', '--json', at('model.sealed')]);
    expect(r.code).toBe(0);
    const h = JSON.parse(r.stdout.toString());
    expect(h).toMatchObject({ chunkSize: 1048576, plaintextLength: plain.length, name: 'model.bin' });
    expect(h.recipients.map((x: { type: string }) => x.type)).toEqual(['kbs', 'hpke']);
    expect(r.stdout.toString()).not.toContain(JSON.parse(readFileSync(at('owner.kek'), 'utf8')).k);
  });
  it('every verb has --help with an example', () => {
    for (const verb of ['keygen', 'seal', 'unseal', 'inspect']) {
      const r = cloister([verb, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout.toString()).toMatch(/Example/);
    }
  });
});
