/**
 * End to end against a real broker process: `cloister kbs serve --dev` (the sample TEE allowed at
 * `warning`, as docs/policy.md describes), administered with `cloister kbs …`, files sealed with
 * `cloister seal`, and `cloister run` / `cloister agent serve` as separate processes — the flow of the
 * demo and the docs.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { runVerifyReceipt } from '../../src/cli/agent.js';
import { openBytes } from '../../src/seal/container.js';
import { keyFromJwk } from '../../src/seal/keys.js';
import { utf8 } from '../../src/util/bytes.js';
import { cliTimeouts } from '../cli/run.js';
import { cli, ensureBuilt, entries, shmParent, tempDir, waitFor } from './helpers.js';

vi.setConfig(cliTimeouts());

let dir: string;
let shm: string;
let url: string;
let token: string;
let broker: ReturnType<typeof cli>;

async function ok(args: string[]): Promise<string> {
  const r = await cli(args, { cwd: dir }).done;
  if (r.code !== 0) throw new Error(`cloister ${args.join(' ')} → ${r.code}: ${r.stderr}`);
  return r.stdout;
}

const admin = () => ['--url', url, '--token', token];

/** `cloister agent verify-receipt` called in this process; what it printed and its exit status. */
async function verifyReceiptCli(file: string, opts: Parameters<typeof runVerifyReceipt>[1]) {
  let out = '';
  let err = '';
  const code = await runVerifyReceipt(file, opts, {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
  });
  return { code, out, err };
}

beforeAll(async () => {
  ensureBuilt();
  dir = tempDir();
  shm = shmParent();
  const ear = await generateKeyPair('ES256', { extractable: true });
  writeFileSync(join(dir, 'ear.jwk'), JSON.stringify(await exportJWK(ear.privateKey)));
  writeFileSync(join(dir, 'ear.pub.jwk'), JSON.stringify(await exportJWK(ear.publicKey)));
  await ok(['kbs', 'admin-key', '--out', 'admin.jwk', '--pub', 'admin.pub.jwk']);
  writeFileSync(
    join(dir, 'kbs.json'),
    JSON.stringify({
      adminKeysFile: 'admin.pub.jwk',
      earKeyFile: 'ear.jwk',
      rateLimit: { perSecond: 0, burst: 0 },
    }),
  );
  broker = cli(['kbs', 'serve', '--dev', '--config', 'kbs.json', '--db', 'sqlite:kbs.db', '--port', '0'], {
    cwd: dir,
    env: {
      CLOISTER_KBS_MASTER_KEY: btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
    },
  });
  let out = '';
  broker.child.stdout!.on('data', (d) => {
    out += d;
  });
  await waitFor(() => out, /^http:\/\/\S+\n/, broker.child);
  url = out.trim();
  token = (await ok(['kbs', 'admin-token', '--key', 'admin.jwk'])).trim();

  // The owner's side: keys, sealed input, keys stored at the broker, one resource refused by policy.
  await ok(['keygen', '--kek', 'owner.kek', '--uri', 'kbs:///owner/models/kek1']);
  await ok(['keygen', '--kek', 'out.kek', '--uri', 'kbs:///owner/outputs/kek2']);
  await ok(['keygen', '--kek', 'denied.kek', '--uri', 'kbs:///owner/models/denied']);
  writeFileSync(join(dir, 'prompt.txt'), 'what is confidential computing?\n');
  await ok(['seal', '--to', 'kbs:///owner/models/kek1=owner.kek', 'prompt.txt', 'prompt.txt.sealed']);
  await ok(['seal', '--to', 'kbs:///owner/models/denied=denied.kek', 'prompt.txt', 'denied.sealed']);
  await ok(['kbs', 'resource', 'put', 'owner/models/kek1', 'owner.kek', ...admin()]);
  await ok(['kbs', 'resource', 'put', 'owner/outputs/kek2', 'out.kek', ...admin()]);
  await ok(['kbs', 'resource', 'put', 'owner/models/denied', 'denied.kek', ...admin()]);
  writeFileSync(join(dir, 'deny.cel'), 'false\n');
  await ok(['kbs', 'policy', 'set', 'resource:owner/models/denied', 'deny.cel', ...admin()]);
});

afterAll(async () => {
  broker?.child.kill('SIGTERM');
  await broker?.done;
  rmSync(dir, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

const WORKLOAD = 'wc -w < "$CLOISTER_INPUT_PROMPT_TXT" | tr -d " " > "$CLOISTER_OUTPUT_DIR/count.txt"';

describe('agent against a real broker (cloister kbs serve --dev)', () => {
  it('cloister run: keys released to the sample TEE, output sealed to a broker-held KEK, receipt verifies with the EAR key', async () => {
    const r = await cli(
      [
        'run',
        '--kbs',
        url,
        '--tee',
        'sample',
        '--private-dir',
        shm,
        '--input',
        'prompt.txt.sealed',
        '--output-dir',
        'out',
        '--seal-to',
        'kbs:///owner/outputs/kek2',
        '--',
        'sh',
        '-c',
        WORKLOAD,
      ],
      { cwd: dir },
    ).done;
    expect(r.stderr).toContain('key released for prompt.txt.sealed (owner/models/kek1)');
    expect(r.code).toBe(0);
    expect(entries(shm)).toEqual([]);
    const kek = keyFromJwk(readFileSync(join(dir, 'out.kek'), 'utf8'));
    if (kek.kind !== 'kek') throw new Error('not a KEK');
    const count = await openBytes(readFileSync(join(dir, 'out', 'count.txt.sealed')), kek);
    expect(utf8.decode(count)).toBe('4\n');

    const v = await cli(
      ['agent', 'verify-receipt', 'out/run-receipt.json', '--ear-key', 'ear.pub.jwk', '--json'],
      {
        cwd: dir,
      },
    ).done;
    // It verifies, but the sample TEE is insecure: a verdict with a warning, exit 2 (as cloister verify).
    expect(v.code).toBe(2);
    const j = JSON.parse(v.stdout);
    expect(j).toMatchObject({ ok: true, insecure: true, ear: 'warning' });
    expect(j.body.tee.claims.submods.cpu0['cloister.kind']).toBe('sample');
    expect(j.body.inputs[0].kbs).toBe('kbs:///owner/models/kek1');

    // Signed by a different broker: the EAR check fails.
    const other = await generateKeyPair('ES256', { extractable: true });
    writeFileSync(join(dir, 'other.pub.jwk'), JSON.stringify(await exportJWK(other.publicKey)));
    const bad = await cli(['agent', 'verify-receipt', 'out/run-receipt.json', '--ear-key', 'other.pub.jwk'], {
      cwd: dir,
    }).done;
    expect(bad.code).toBe(3);
    expect(bad.stderr).toMatch(
      /^cloister agent verify-receipt: out\/run-receipt.json: does not verify \[ear-bad-signature\]: EAR signature does not verify/,
    );

    // The same verb as a library call: every end has its status and one line naming the file.
    const receipt = join(dir, 'out', 'run-receipt.json');
    const text = await verifyReceiptCli(receipt, {});
    expect([text.code, text.err]).toEqual([2, '']);
    expect(text.out).toMatch(
      /TEE evidence: sample, warning \(INSECURE sample TEE\)\n[\s\S]*result: WARNING\n$/,
    );
    const jws = JSON.parse(readFileSync(receipt, 'utf8'));
    const tampered = join(dir, 'tampered.json');
    const sig = jws.signature as string;
    writeFileSync(
      tampered,
      JSON.stringify({ ...jws, signature: `${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}` }),
    );
    const t = await verifyReceiptCli(tampered, { json: true });
    expect(t.code).toBe(3);
    expect(t.err).toMatch(
      /^cloister agent verify-receipt: .*tampered\.json: does not verify \[receipt-signature\]: .*\n$/,
    );
    expect(JSON.parse(t.out)).toMatchObject({ ok: false, error: { code: 'receipt-signature' } });
    writeFileSync(tampered, 'not json');
    expect((await verifyReceiptCli(tampered, {})).code).toBe(3);
    const missing = await verifyReceiptCli(join(dir, 'nope.json'), {});
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/^cloister agent verify-receipt: cannot read receipt .*nope\.json: /);
    const at = await verifyReceiptCli(receipt, { at: 'yesterday' });
    expect([at.code, at.err]).toEqual([64, expect.stringMatching(/--at yesterday is not a time/)]);
  });

  it('cloister run: the policy refuses a key → nothing unsealed, the broker’s reason is shown', async () => {
    const r = await cli(
      [
        'run',
        '--kbs',
        url,
        '--tee',
        'sample',
        '--private-dir',
        shm,
        '--input',
        'denied.sealed',
        '--',
        'touch',
        'ran',
      ],
      { cwd: dir },
    ).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cloister: resource owner\/models\/denied refused by the key broker \(403/);
    expect(entries(shm)).toEqual([]);
    expect(entries(dir)).not.toContain('ran');
  });

  it('cloister agent serve: unseals through the broker and shows policy refusals as 403 problems', async () => {
    const socket = join(dir, 'agent.sock');
    const agent = cli(['agent', 'serve', '--socket', socket, '--kbs', url, '--tee', 'sample'], { cwd: dir });
    try {
      await waitFor(agent.stderr, /listening on/, agent.child);
      const post = (path: string, body: Uint8Array) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const req = request({ socketPath: socket, path, method: 'POST', agent: false }, (res) => {
            let b = '';
            res.on('data', (d) => {
              b += d;
            });
            res.on('end', () => resolve({ status: res.statusCode!, body: b }));
          });
          req.on('error', reject);
          req.end(body);
        });
      const opened = await post('/unseal', readFileSync(join(dir, 'prompt.txt.sealed')));
      expect(opened).toEqual({ status: 200, body: 'what is confidential computing?\n' });
      const refused = await post('/unseal', readFileSync(join(dir, 'denied.sealed')));
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.body).detail).toMatch(
        /resource owner\/models\/denied refused by the key broker/,
      );
    } finally {
      agent.child.kill('SIGTERM');
      await agent.done;
    }
  });
});
