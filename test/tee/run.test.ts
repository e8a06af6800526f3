import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { createDefaultRegistry } from '../../src/attest/index.js';
import { openBytes } from '../../src/seal/container.js';
import { generateHpkeKeyPair, hpkePublicToJwk } from '../../src/seal/keys.js';
import { verifyReceipt } from '../../src/tee/receipt.js';
import { sha256, toHex, utf8 } from '../../src/util/bytes.js';
import { cliTimeouts } from '../cli/run.js';
import { type FakeKbs, startFakeKbs } from './fake-kbs.js';
import { cli, ensureBuilt, entries, putKek, shmParent, tempDir, waitFor, writeSealed } from './helpers.js';

vi.setConfig(cliTimeouts(120_000));

let kbs: FakeKbs;
let work: string;
let shm: string;

beforeAll(async () => {
  ensureBuilt();
  kbs = await startFakeKbs();
});
afterAll(async () => {
  await kbs.close();
});
beforeEach(() => {
  work = tempDir();
  shm = shmParent();
  kbs.deny.clear();
  kbs.failNext = 0;
  return () => {
    rmSync(work, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  };
});

/** Whether `pid` is running (a zombie has ended: it only waits to be reaped). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const base = () => [
  'run',
  '--kbs',
  kbs.url,
  '--tee',
  'sample',
  '--private-dir',
  shm,
  '--retry-delay-ms',
  '10',
];

const SHELL_WORKLOAD = `#!/bin/sh
set -e
tr a-z A-Z < "$CLOISTER_INPUT_0" > "$CLOISTER_OUTPUT_DIR/upper.txt"
mkdir -p "$CLOISTER_OUTPUT_DIR/sub"
cat "$CLOISTER_INPUT_NOTES_TXT" "$CLOISTER_INPUT_1" > "$CLOISTER_OUTPUT_DIR/sub/both.txt"
stat -c %a "$CLOISTER_PRIVATE_DIR" "$CLOISTER_INPUT_0" "$CLOISTER_OUTPUT_DIR/upper.txt" | tr '\\n' ' '
echo "count=$CLOISTER_INPUT_COUNT"
`;

const PYTHON_WORKLOAD = `import json, os, sys
src = open(os.environ["CLOISTER_INPUT_0"]).read()
with open(os.path.join(os.environ["CLOISTER_OUTPUT_DIR"], "stats.json"), "w") as f:
    json.dump({"chars": len(src), "words": len(src.split())}, f)
print("python saw", len(src), "chars")
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
`;

describe('cloister run', () => {
  it('runs a shell workload: inputs unsealed 0600 in tmpfs, outputs sealed, receipt verifies, nothing left', async () => {
    const inKek = putKek(kbs, 'owner/models/kek1');
    const outKek = putKek(kbs, 'owner/outputs/kek2');
    const a = await writeSealed(work, 'doc.sealed', 'hello confidential world\n', inKek);
    const b = await writeSealed(work, 'n.sealed', 'second input\n', inKek, 'notes.txt');
    const script = join(work, 'w.sh');
    writeFileSync(script, SHELL_WORKLOAD);
    const out = join(work, 'out');
    const r = await cli([
      ...base(),
      '--input',
      a,
      '--input',
      b,
      '--output-dir',
      out,
      '--seal-to',
      'kbs:///owner/outputs/kek2',
      '--',
      'sh',
      script,
    ]).done;
    expect(r.stderr).toContain('cloister run: TEE: sample');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('700 600 600 count=2\n');
    expect(entries(shm)).toEqual([]);
    expect(entries(out).sort()).toEqual(['run-receipt.json', 'sub', 'upper.txt.sealed']);
    const upper = readFileSync(join(out, 'upper.txt.sealed'));
    expect(utf8.decode(await openBytes(upper, outKek))).toBe('HELLO CONFIDENTIAL WORLD\n');
    const both = readFileSync(join(out, 'sub', 'both.txt.sealed'));
    expect(utf8.decode(await openBytes(both, outKek))).toBe('second input\nsecond input\n');
    // The input key cannot open outputs: they are sealed to the --seal-to recipient only.
    await expect(openBytes(upper, inKek)).rejects.toThrow(/does not open/);

    const receipt = JSON.parse(readFileSync(join(out, 'run-receipt.json'), 'utf8'));
    const v = await verifyReceipt(receipt, {
      registry: createDefaultRegistry(),
      at: new Date(),
      collateral: { get: async () => undefined },
      earKey: kbs.earKey.publicKey,
    });
    expect(v.appraisal.kind).toBe('sample');
    expect(v.appraisal.insecure).toBe(true);
    expect(v.ear?.extraClaims['cloister.tee-pubkey']).toBeDefined();
    expect(v.body.command).toEqual(['sh', script]);
    expect(v.body.exitCode).toBe(0);
    expect(v.body.inputs.map((i) => [i.file, i.name, i.kbs, i.sealedSha256])).toEqual([
      [a, 'doc', 'kbs:///owner/models/kek1', toHex(await sha256(readFileSync(a)))],
      [b, 'notes.txt', 'kbs:///owner/models/kek1', toHex(await sha256(readFileSync(b)))],
    ]);
    expect(v.body.outputs.map((o) => [o.file, o.sealedSha256, o.recipients])).toEqual([
      ['sub/both.txt.sealed', toHex(await sha256(both)), ['kbs:///owner/outputs/kek2']],
      ['upper.txt.sealed', toHex(await sha256(upper)), ['kbs:///owner/outputs/kek2']],
    ]);
    expect(v.body.tee.kind).toBe('sample');
  });

  it('a changed receipt is refused', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'x', k);
    const out = join(work, 'out');
    const r = await cli([
      ...base(),
      '--input',
      a,
      '--output-dir',
      out,
      '--seal-to',
      'kbs:///owner/models/kek1',
      '--',
      'true',
    ]).done;
    expect(r.code).toBe(0);
    const receipt = JSON.parse(readFileSync(join(out, 'run-receipt.json'), 'utf8'));
    const body = JSON.parse(Buffer.from(receipt.payload, 'base64url').toString());
    body.exitCode = 1;
    receipt.payload = Buffer.from(JSON.stringify(body)).toString('base64url');
    await expect(
      verifyReceipt(receipt, {
        registry: createDefaultRegistry(),
        at: new Date(),
        collateral: { get: async () => undefined },
      }),
    ).rejects.toThrow(/signature does not verify/);
  });

  it('runs a python workload and passes its exit status through; a failed workload has no outputs sealed', async () => {
    const k = putKek(kbs, 'owner/data/d1');
    const a = await writeSealed(work, 'text.sealed', 'one two three', k, 'text.txt');
    const script = join(work, 'w.py');
    writeFileSync(script, PYTHON_WORKLOAD);
    const out = join(work, 'out');
    const args = [
      ...base(),
      '--input',
      a,
      '--output-dir',
      out,
      '--seal-to',
      'kbs:///owner/data/d1',
      '--',
      'python3',
      script,
    ];
    const ok = await cli(args).done;
    expect(ok.code).toBe(0);
    expect(ok.stdout).toBe('python saw 13 chars\n');
    const stats = await openBytes(readFileSync(join(out, 'stats.json.sealed')), k);
    expect(JSON.parse(utf8.decode(stats))).toEqual({ chars: 13, words: 3 });

    const out2 = join(work, 'out2');
    args[args.indexOf(out)] = out2;
    const failed = await cli(args, { env: { EXIT_WITH: '3' } }).done;
    expect(failed.code).toBe(3);
    expect(failed.stderr).toContain('not sealing 1 output file(s): the workload failed');
    expect(entries(out2)).toEqual(['run-receipt.json']);
    expect(entries(shm)).toEqual([]);
  });

  it('--seal-to hpke:PUBLIC-KEY-FILE seals outputs to an HPKE key as well as a broker KEK', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'abc', k);
    const pair = await generateHpkeKeyPair();
    const pub = join(work, 'owner.pub.jwk');
    writeFileSync(pub, JSON.stringify(await hpkePublicToJwk(pair.publicKey)));
    const out = join(work, 'out');
    const r = await cli([
      ...base(),
      '--input',
      a,
      '--output-dir',
      out,
      '--seal-to',
      `hpke:${pub}`,
      '--seal-to',
      'kbs:///owner/models/kek1',
      '--',
      'sh',
      '-c',
      'cp "$CLOISTER_INPUT_0" "$CLOISTER_OUTPUT_DIR/copy"',
    ]).done;
    expect(r.code).toBe(0);
    const sealed = readFileSync(join(out, 'copy.sealed'));
    expect(utf8.decode(await openBytes(sealed, pair))).toBe('abc');
    expect(utf8.decode(await openBytes(sealed, k))).toBe('abc');
    const bad = await cli([
      ...base(),
      '--output-dir',
      out,
      '--seal-to',
      `hpke:${join(work, 'missing')}`,
      '--',
      'true',
    ]).done;
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/missing: no such file or directory/);
  });

  it('policy denial: nothing is unsealed, the workload never runs, the message names the refusal', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    kbs.deny.add('owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'secret', k);
    const marker = join(work, 'ran');
    const r = await cli([...base(), '--input', a, '--', 'touch', marker]).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /cloister: resource owner\/models\/kek1 refused by the key broker \(403 policy-denied\): policy refuses owner\/models\/kek1/,
    );
    expect(entries(shm)).toEqual([]);
    expect(entries(work)).not.toContain('ran');
  });

  it('a denied output recipient stops the run before anything is unsealed', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    putKek(kbs, 'owner/out/k');
    kbs.deny.add('owner/out/k');
    const a = await writeSealed(work, 'in.sealed', 'secret', k);
    const r = await cli([
      ...base(),
      '--input',
      a,
      '--output-dir',
      join(work, 'o'),
      '--seal-to',
      'kbs:///owner/out/k',
      '--',
      'true',
    ]).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('resource owner/out/k refused by the key broker (403 policy-denied)');
    expect(r.stderr).not.toContain('unsealed');
    expect(entries(shm)).toEqual([]);
  });

  it('--init-data sends the file as it is with the evidence; a missing file is a clear error', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'secret', k);
    const toml = 'algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n"cdh.toml" = \'\'\'x\'\'\'\n';
    writeFileSync(join(work, 'initdata.toml'), toml);
    const sent = kbs.initData.length;
    const ok = await cli([...base(), '--init-data', join(work, 'initdata.toml'), '--input', a, '--', 'true'])
      .done;
    expect(ok.code).toBe(0);
    expect(kbs.initData.slice(sent)).toEqual([{ format: 'toml', body: toml }]);
    const r = await cli([...base(), '--init-data', join(work, 'none.toml'), '--input', a, '--', 'true']).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cloister: cannot read --init-data .*none\.toml: ENOENT/);
    expect(entries(shm)).toEqual([]);
  });

  it('broker unreachable: retries, then a clear error', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'secret', k);
    const r = await cli([
      'run',
      '--kbs',
      'http://127.0.0.1:9',
      '--tee',
      'sample',
      '--private-dir',
      shm,
      '--retries',
      '3',
      '--retry-delay-ms',
      '10',
      '--input',
      a,
      '--',
      'true',
    ]).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cloister: key broker at http:\/\/127\.0\.0\.1:9 unreachable after 3 attempts/);
    expect(entries(shm)).toEqual([]);
  });

  it('a broker answering 503 twice is retried and the run succeeds', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'secret', k);
    kbs.failNext = 2;
    const r = await cli([...base(), '--input', a, '--', 'true']).done;
    expect(r.code).toBe(0);
    expect(kbs.failNext).toBe(0);
  });

  it('a tampered input fails the run with chunk-tampered and leaves no plaintext', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'x'.repeat(500), k);
    const bytes = readFileSync(a);
    bytes[bytes.length - 20]! ^= 1;
    writeFileSync(a, bytes);
    const r = await cli([...base(), '--input', a, '--', 'true']).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/failed authentication/);
    expect(entries(shm)).toEqual([]);
  });

  it('refuses a private directory on a disk unless --allow-disk', async () => {
    const k = putKek(kbs, 'owner/models/kek1');
    const a = await writeSealed(work, 'in.sealed', 'x', k);
    const disk = tempDir(process.cwd());
    try {
      const args = ['run', '--kbs', kbs.url, '--tee', 'sample', '--private-dir', disk, '--input', a];
      const asked = kbs.log.length;
      const refused = await cli([...args, '--', 'true']).done;
      expect(refused.code).toBe(1);
      // Refused before the broker was asked for anything.
      expect(kbs.log.length).toBe(asked);
      expect(refused.stderr).toMatch(
        /is on \S+ \(mounted at .*\), not tmpfs or ramfs: plaintext could reach a disk/,
      );
      const allowed = await cli([...args, '--allow-disk', '--', 'true']).done;
      expect(allowed.code).toBe(0);
      expect(allowed.stderr).toContain('WARNING:');
      expect(entries(disk)).toEqual([]);
    } finally {
      rmSync(disk, { recursive: true, force: true });
    }
  });

  describe('never writes through a symbolic link planted in the output directory', () => {
    const sealed = (out: string, receipt?: string) => [
      ...base(),
      '--output-dir',
      out,
      ...(receipt ? ['--receipt', receipt] : []),
      '--seal-to',
      'kbs:///owner/models/kek1',
      '--',
      'sh',
      '-c',
      'echo secret > "$CLOISTER_OUTPUT_DIR/a.txt"; mkdir "$CLOISTER_OUTPUT_DIR/sub"; echo x > "$CLOISTER_OUTPUT_DIR/sub/b.txt"',
    ];

    it('a run-receipt.json link is refused before the broker is asked; its target is untouched', async () => {
      putKek(kbs, 'owner/models/kek1');
      const out = join(work, 'out');
      mkdirSync(out);
      const victim = join(work, 'victim');
      writeFileSync(victim, 'root-owned file');
      symlinkSync(victim, join(out, 'run-receipt.json'));
      const asked = kbs.log.length;
      const r = await cli(sealed(out)).done;
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`cloister: refusing ${out}/run-receipt.json: it is a symbolic link\n`);
      expect(kbs.log.length).toBe(asked);
      expect(readFileSync(victim, 'utf8')).toBe('root-owned file');
      expect(entries(out)).toEqual(['run-receipt.json']);
      expect(entries(shm)).toEqual([]);
      // --receipt FILE: a link there is refused the same way.
      const r2 = await cli(sealed(join(work, 'out2'), join(out, 'run-receipt.json'))).done;
      expect(r2.code).toBe(1);
      expect(r2.stderr).toContain(`refusing ${out}/run-receipt.json: it is a symbolic link`);
      expect(readFileSync(victim, 'utf8')).toBe('root-owned file');
    });

    it('a symlinked subdirectory: nothing is sealed (inside or outside), the run fails naming it', async () => {
      putKek(kbs, 'owner/models/kek1');
      const out = join(work, 'out');
      const elsewhere = join(work, 'elsewhere');
      mkdirSync(out);
      mkdirSync(elsewhere);
      symlinkSync(elsewhere, join(out, 'sub'));
      const r = await cli(sealed(out)).done;
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`cloister: refusing ${out}/sub: it is a symbolic link\n`);
      expect(entries(elsewhere)).toEqual([]);
      expect(entries(out)).toEqual(['sub']);
      expect(entries(shm)).toEqual([]);
    });
  });

  for (const setpriv of [true, false]) {
    it(`SIGKILL of the agent: the workload and its children die, the next run wipes the plaintext${setpriv ? '' : ' (no setpriv: the group watcher alone)'}`, async () => {
      const k = putKek(kbs, 'owner/models/kek1');
      const a = await writeSealed(work, 'in.sealed', 'plaintext left behind', k);
      const pids = join(work, 'pids');
      // Without setpriv on PATH: only what the workload needs.
      const bin = join(work, 'bin');
      mkdirSync(bin);
      for (const p of ['sh', 'sleep', 'mv', 'true']) symlinkSync(`/bin/${p}`, join(bin, p));
      const env = setpriv ? {} : { PATH: bin };
      // The main process (sh) and a child of it (sleep), which a parent-death signal alone would miss.
      const run = cli(
        [
          ...base(),
          '--input',
          a,
          '--',
          'sh',
          '-c',
          `sleep 300 & echo "$$ $!" > ${pids}.tmp; mv ${pids}.tmp ${pids}; wait`,
        ],
        { env },
      );
      await waitFor(run.stderr, /running sh/, run.child);
      expect(
        run
          .stderr()
          .includes(
            'WARNING: no parent-death signal for the workload: setpriv (util-linux) is not installed',
          ),
      ).toBe(!setpriv);
      for (let i = 0; !existsSync(pids); i++) {
        if (i > 600) throw new Error(`the workload did not start: ${run.stderr()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const workload = readFileSync(pids, 'utf8').trim().split(' ').map(Number);
      expect(workload.every(running)).toBe(true);
      const left = entries(shm);
      expect(left).toHaveLength(1);
      run.child.kill('SIGKILL');
      await run.done;
      for (let i = 0; workload.some(running); i++) {
        if (i > 600) throw new Error(`the workload outlived the agent: ${workload.filter(running)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      // The plaintext is still there: nothing could run at SIGKILL.
      expect(readFileSync(join(shm, left[0]!, 'inputs', 'in'), 'utf8')).toBe('plaintext left behind');
      const next = await cli([...base(), '--', 'true'], { env }).done;
      expect(next.code).toBe(0);
      expect(next.stderr).toContain(`wiped ${join(shm, left[0]!)}, left by process ${run.child.pid}`);
      expect(entries(shm)).toEqual([]);
    });
  }

  describe('wipes the private directory on every exit path', () => {
    const sleeper = (marker: string) => ['sh', '-c', `touch ${marker}; sleep 30`];
    for (const [sig, code] of [
      ['SIGTERM', 143],
      ['SIGINT', 130],
    ] as const) {
      it(`${sig} to the agent: passed to the workload, exit ${code}`, async () => {
        const k = putKek(kbs, 'owner/models/kek1');
        const a = await writeSealed(work, 'in.sealed', 'secret', k);
        const marker = join(work, 'started');
        const out = join(work, 'out');
        const run = cli([
          ...base(),
          '--input',
          a,
          '--output-dir',
          out,
          '--seal-to',
          'kbs:///owner/models/kek1',
          '--',
          ...sleeper(marker),
        ]);
        await waitFor(run.stderr, /running sh/, run.child);
        expect(entries(shm)).toHaveLength(1);
        run.child.kill(sig);
        const r = await run.done;
        expect(r.code).toBe(code);
        expect(r.stderr).toContain(`${sig}: passing it to the workload`);
        expect(entries(shm)).toEqual([]);
        expect(entries(out)).toEqual(['run-receipt.json']);
      });
    }

    it('a workload killed by a signal: exit 128+n, wiped', async () => {
      const k = putKek(kbs, 'owner/models/kek1');
      const a = await writeSealed(work, 'in.sealed', 'secret', k);
      const r = await cli([
        ...base(),
        '--input',
        a,
        '--',
        'sh',
        '-c',
        'echo x > "$CLOISTER_OUTPUT_DIR/o"; kill -KILL $$',
      ]).done;
      expect(r.code).toBe(137);
      expect(r.stderr).toContain('workload ended by SIGKILL');
      expect(entries(shm)).toEqual([]);
    });

    it('a workload that cannot be started: a clear error, wiped', async () => {
      const k = putKek(kbs, 'owner/models/kek1');
      const a = await writeSealed(work, 'in.sealed', 'secret', k);
      const r = await cli([...base(), '--input', a, '--', join(work, 'no-such-program')]).done;
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/cannot run .*no-such-program: ENOENT/);
      expect(entries(shm)).toEqual([]);
    });
  });
});
