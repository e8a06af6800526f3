/**
 * `cloister receipt verify` and `cloister receipt report`, called in this process (as test/tee/broker.test.ts
 * does for `agent verify-receipt`), on training receipts from the INSECURE sample TEE.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueEar, offlineSource, sampleVerifier } from '../../src/attest/index.js';
import { runReceiptReport, runReceiptVerify } from '../../src/cli/receipt.js';
import { createAttestedSigner, signStatement } from '../../src/tee/attested-receipt.js';
import { InsecureSampleAttester } from '../../src/tee/evidence/sample.js';
import { signTrainingReceipt } from '../../src/tee/training-receipt.js';
import { fromBase64, fromHex } from '../../src/util/bytes.js';
import { IN_TOTO_STATEMENT_TYPE } from '../../src/wire/dsse.js';
import { JOB, launchedFor, sampleFacts, sampleReceipt } from '../train/receipt-fixture.js';

let dir: string;
let receipt: string;
let text: string;

async function run(
  verb: typeof runReceiptVerify | typeof runReceiptReport,
  file: string,
  opts: Record<string, unknown> = {},
) {
  let out = '';
  let err = '';
  const code = await verb(file, opts, {
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
  dir = mkdtempSync(join(tmpdir(), 'cloister-receipt-'));
  receipt = join(dir, 'training-receipt.json');
  text = JSON.stringify(await sampleReceipt());
  writeFileSync(receipt, text);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('cloister receipt verify', () => {
  it('a sample-TEE training receipt verifies with a warning (exit 2)', async () => {
    const r = await run(runReceiptVerify, receipt);
    expect([r.code, r.err]).toEqual([2, '']);
    expect(r.out).toMatch(
      /^receipt training-receipt\.json: training receipt \(https:\/\/cloister\.dev\/attestation\/training\/v1\)\n/,
    );
    expect(r.out).toContain('TEE evidence: sample, warning (INSECURE sample TEE)\n');
    expect(r.out).toContain('EAR token: not checked (give --ear-key or --kbs)\n');
    expect(r.out).toContain(`job: tiny-lm, manifest sha256 ${JOB}\n`);
    expect(r.out).toContain(
      'output model.gguf.sealed sha256 ' + '05'.repeat(32) + ' → kbs:///owner/model/key\n',
    );
    expect(r.out).toMatch(/result: WARNING\n$/);
    const j = await run(runReceiptVerify, receipt, { json: true });
    expect(j.code).toBe(2);
    expect(JSON.parse(j.out)).toMatchObject({
      ok: true,
      status: 'warning',
      insecure: true,
      ear: null,
      statement: { predicate: { manifest: { sha256: JOB } } },
    });
  });

  it('a policy over the verified receipt: true keeps the verdict, false is exit 3 with the failing clause', async () => {
    const good = join(dir, 'good.cel');
    writeFileSync(
      good,
      'predicate.manifest.name == "tiny-lm" &&\n predicate.seed == 42 &&\n tee.kind == "sample" && ear == null &&\n' +
        ' statement.subject.exists(s, s.name == "model.gguf.sealed") && predicate.metrics.heldout_loss < 3.0',
    );
    const ok = await run(runReceiptVerify, receipt, { policy: good });
    expect(ok.code).toBe(2);
    expect(ok.out).toContain(`policy ${good}: holds\n`);
    const bad = join(dir, 'bad.cel');
    writeFileSync(bad, 'predicate.seed == 42 &&\n  !tee.insecure');
    const no = await run(runReceiptVerify, receipt, { policy: bad });
    expect(no.code).toBe(3);
    expect(no.err).toBe(
      `cloister receipt verify: ${receipt}: policy ${bad} does not hold: failed (line 2:3): !tee.insecure\n`,
    );
    expect(no.out).toMatch(/result: REFUSED BY POLICY\n$/);
    const json = await run(runReceiptVerify, receipt, { policy: bad, json: true });
    expect(JSON.parse(json.out)).toMatchObject({ ok: false, policy: { allow: false } });
    const broken = join(dir, 'broken.cel');
    writeFileSync(broken, 'predicate.seed ==');
    const b = await run(runReceiptVerify, receipt, { policy: broken });
    expect(b.code).toBe(1);
    expect(b.err).toMatch(
      /^cloister receipt verify: policy .*broken\.cel: policy-syntax at line 1, column \d+/,
    );
  });

  it('checks the EAR token with --ear-key; a key and no token is a warning; both --ear-key and --kbs is usage', async () => {
    const signer = await createAttestedSigner(await launchedFor(sampleFacts()), fromHex(JOB));
    const appraisal = await sampleVerifier.appraiseEvidence(fromBase64(signer.attestation.evidence), {
      at: new Date(),
      collateral: offlineSource,
    });
    const broker = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const facts = sampleFacts();
    const ear = await issueEar(
      { cpu0: appraisal },
      {
        signingKey: broker.privateKey,
        issuedAt: new Date(facts.startedAt),
        extraClaims: { 'cloister.init-data': { data: { 'cloister.train.manifest': JOB } } },
      },
    );
    const withEar = join(dir, 'with-ear.json');
    writeFileSync(withEar, JSON.stringify(await signTrainingReceipt(facts, signer, { ear })));
    const key = join(dir, 'ear.pub.jwk');
    writeFileSync(key, JSON.stringify(await exportJWK(broker.publicKey)));
    const r = await run(runReceiptVerify, withEar, { earKey: key });
    expect(r.code).toBe(2);
    expect(r.out).toContain(`EAR token: verifies, ${appraisal.status}\n`);
    const none = await run(runReceiptVerify, receipt, { earKey: key });
    expect([none.code, none.out]).toEqual([
      2,
      expect.stringContaining('EAR token: none in the receipt (warning)\n'),
    ]);
    const other = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const otherKey = join(dir, 'other.pub.jwk');
    const otherJwk = await exportJWK(other.publicKey);
    writeFileSync(otherKey, JSON.stringify(otherJwk));
    const wrong = await run(runReceiptVerify, withEar, { earKey: otherKey });
    expect(wrong.code).toBe(3);
    expect(wrong.err).toMatch(
      /^cloister receipt verify: .*with-ear\.json: does not verify \[ear-bad-signature\]: /,
    );
    // --kbs: the key the token's kid names, from the broker's published keys.
    const { createServer } = await import('node:http');
    const pub = { ...(await exportJWK(broker.publicKey)), kid: 'k2' };
    const server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(
        req.url === '/.well-known/cloister-kbs'
          ? JSON.stringify({
              ear: { keys: [{ ...otherJwk, kid: 'k1' }, pub] },
              log: { origin: 'test', verifierKey: 'x' },
            })
          : '{}',
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const kidEar = await issueEar(
        { cpu0: appraisal },
        {
          signingKey: broker.privateKey,
          issuedAt: new Date(facts.startedAt),
          kid: 'k2',
          extraClaims: { 'cloister.init-data': { data: { 'cloister.train.manifest': JOB } } },
        },
      );
      const f = join(dir, 'kid-ear.json');
      writeFileSync(f, JSON.stringify(await signTrainingReceipt(facts, signer, { ear: kidEar })));
      const viaKbs = await run(runReceiptVerify, f, { kbs: url });
      expect([viaKbs.code, viaKbs.err]).toEqual([2, '']);
      expect(viaKbs.out).toContain(`EAR token: verifies, ${appraisal.status}\n`);
    } finally {
      server.close();
    }
    const both = await run(runReceiptVerify, receipt, { earKey: key, kbs: 'http://127.0.0.1:1' });
    expect([both.code, both.err]).toEqual([
      64,
      'cloister receipt verify: give --ear-key FILE or --kbs URL, not both\n',
    ]);
  });

  it('a receipt with any one character changed is refused: one line, exit 3', async () => {
    // A change that could be the alphabet switch DSSE allows (+ ↔ -, / ↔ _) is not a change of content.
    const swap = (c: string) => (/[A-Za-z0-9]/.test(c) ? (c === 'A' ? 'B' : 'A') : c === '"' ? "'" : 'A');
    const positions = Array.from({ length: text.length }, (_, i) => i).filter(
      (i) => i % 53 === 0 || i < 40 || i > text.length - 160,
    );
    const tampered = join(dir, 'tampered.json');
    for (const i of positions) {
      writeFileSync(tampered, text.slice(0, i) + swap(text[i]!) + text.slice(i + 1));
      const r = await run(runReceiptVerify, tampered);
      expect(r.code, `position ${i}: ${r.out}`).toBe(3);
      expect(r.err, `position ${i}`).toMatch(
        /^cloister receipt verify: .*tampered\.json: does not verify \[[a-z-]+\]: [^\n]+\n$/,
      );
      expect(r.out).toBe('');
    }
    writeFileSync(
      tampered,
      text.replace(/"sig":"(.)/, (_, c) => `"sig":"${c === 'A' ? 'B' : 'A'}`),
    );
    const sig = await run(runReceiptVerify, tampered, { json: true });
    expect(sig.err).toMatch(/does not verify \[receipt-signature\]: receipt signature does not verify/);
    expect(JSON.parse(sig.out)).toMatchObject({ ok: false, error: { code: 'receipt-signature' } });
  });

  it('every single-byte change anywhere in the envelope is refused by the verifier', async () => {
    const { verifyTrainingReceipt } = await import('../../src/tee/training-receipt.js');
    const { createDefaultRegistry } = await import('../../src/attest/index.js');
    const options = {
      registry: createDefaultRegistry(),
      at: new Date(),
      collateral: { get: async () => undefined },
    };
    const swap = (c: string) => (/[A-Za-z0-9]/.test(c) ? (c === 'A' ? 'B' : 'A') : c === '"' ? "'" : 'A');
    let refused = 0;
    for (let i = 0; i < text.length; i++) {
      const t = text.slice(0, i) + swap(text[i]!) + text.slice(i + 1);
      await verifyTrainingReceipt(t, options).then(
        () => expect.unreachable(`position ${i} verified`),
        () => refused++,
      );
    }
    expect(refused).toBe(text.length);
  });

  it('names unreadable files, run receipts and bad flags', async () => {
    const missing = await run(runReceiptVerify, join(dir, 'nope.json'));
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/^cloister receipt verify: cannot read receipt .*nope\.json: /);
    const jws = join(dir, 'run-receipt.json');
    writeFileSync(jws, JSON.stringify({ protected: 'e30', payload: 'e30', signature: 'AA' }));
    const r = await run(runReceiptVerify, jws);
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/this is a run receipt \(a JWS\).*cloister agent verify-receipt\n$/);
    const at = await run(runReceiptVerify, receipt, { at: 'yesterday' });
    expect([at.code, at.err]).toEqual([64, expect.stringMatching(/--at yesterday is not a time/)]);
  });

  it('verifies receipts of other predicate types with the same verifier', async () => {
    const signer = await createAttestedSigner(new InsecureSampleAttester(), fromHex('77'.repeat(32)));
    const env = await signStatement(
      {
        _type: IN_TOTO_STATEMENT_TYPE,
        subject: [{ name: 'dataset.parquet.sealed', digest: { sha256: '08'.repeat(32) } }],
        predicateType: 'https://cloister.dev/attestation/data/v1',
        predicate: { step: 'dedupe' },
      },
      signer,
    );
    const f = join(dir, 'data.json');
    writeFileSync(f, JSON.stringify(env));
    const r = await run(runReceiptVerify, f);
    expect(r.code).toBe(2);
    expect(r.out).toContain('attested receipt (https://cloister.dev/attestation/data/v1)');
    expect(r.out).toContain(`subject dataset.parquet.sealed sha256:${'08'.repeat(32)}`);
    const report = await run(runReceiptReport, f);
    expect(report.code).toBe(3);
    expect(report.err).toMatch(/\[receipt-predicate-type\]: a report is made for training receipts/);
  });
});

describe('cloister receipt report', () => {
  it('writes a page with the curve from metrics.jsonl and the facts; names the sample TEE', async () => {
    const metrics = join(dir, 'metrics.jsonl');
    writeFileSync(
      metrics,
      `${Array.from({ length: 20 }, (_, k) => JSON.stringify({ step: k + 1, loss: 3 - k * 0.1, ...(k % 5 === 4 ? { heldout_loss: 3.1 - k * 0.1 } : {}) })).join('\n')}\n`,
    );
    const out = join(dir, 'report.html');
    const r = await run(runReceiptReport, receipt, { metrics, output: out });
    expect(r.code).toBe(0);
    expect(r.err).toBe(
      `wrote ${out} (20 metric lines)\ncloister receipt report: ${receipt}: WARNING: the receipt comes from the INSECURE sample TEE\n`,
    );
    const html = readFileSync(out, 'utf8');
    expect(html).toMatch(/^<!DOCTYPE html>/);
    expect(html).toContain(
      'Verified: signature and key binding; TEE evidence sample, warning; EAR token not checked',
    );
    expect(/points="([^"]*)"/.exec(html)![1]!.split(' ')).toHaveLength(20);
    expect(html).toContain(JOB);
    const again = await run(runReceiptReport, receipt, { metrics, output: out });
    expect(again.code).toBe(1);
    const stdout = await run(runReceiptReport, receipt, {});
    expect(stdout.out).toContain('no metrics recorded');
  });

  it('refuses to report on a receipt that does not verify', async () => {
    const tampered = join(dir, 'tampered-report.json');
    writeFileSync(
      tampered,
      text.replace(/"payload":"(.)/, (_, c) => `"payload":"${c === 'A' ? 'B' : 'A'}`),
    );
    const r = await run(runReceiptReport, tampered, { output: join(dir, 'never.html') });
    expect(r.code).toBe(3);
    expect(r.err).toMatch(/^cloister receipt report: .*tampered-report\.json: does not verify \[[a-z-]+\]: /);
  });
});
