/**
 * Every subpath in package.json `exports`, imported the way a user imports it: through the package's
 * own name, which Node resolves through `exports` to dist/ (so this runs after `npm run build`, as
 * `npm test` does). Each entry point is then used once for real, so a subpath whose file is missing,
 * or whose front door lost a public function, fails here rather than in a user's project.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  name: string;
  exports: Record<string, string>;
  bin: Record<string, string>;
};

/** Native engines and database drivers: optional peers, or (better-sqlite3) only for the broker's store. */
const HEAVY = [
  'node-llama-cpp',
  'onnxruntime-node',
  '@huggingface/transformers',
  'pg',
  '@redis/client',
  'better-sqlite3',
];

/**
 * The packages reached from `entry` through static imports only (`import … from`, `export … from`,
 * `import 'x'`; not `import()`, which loads on use), each with the chain of files that reaches it.
 */
function staticImports(entry: string): { files: number; packages: Map<string, string[]> } {
  const found = new Map<string, string[]>();
  const chains = new Map<string, string[]>([[resolve(entry), [entry]]]);
  const queue = [resolve(entry)];
  while (queue.length > 0) {
    const file = queue.shift()!;
    const chain = chains.get(file)!;
    const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest);
    for (const st of source.statements) {
      if (!ts.isImportDeclaration(st) && !ts.isExportDeclaration(st)) continue;
      if (!st.moduleSpecifier || !ts.isStringLiteral(st.moduleSpecifier)) continue;
      const spec = st.moduleSpecifier.text;
      if (spec.startsWith('.')) {
        const next = resolve(dirname(file), spec);
        if (chains.has(next)) continue;
        chains.set(next, [...chain, relative('.', next)]);
        queue.push(next);
      } else {
        const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
        if (!found.has(name)) found.set(name, [...chain, spec]);
      }
    }
  }
  return { files: chains.size, packages: found };
}
const VECTORS = 'test/vectors';
const TDX = `${VECTORS}/tdx/dcap-qvl_v4_b0c06f_uptodate`;
const utf8 = new TextEncoder();

describe('package entry points', () => {
  it('lists the entry points this test covers, and each resolves to a built file', async () => {
    expect(Object.keys(pkg.exports).sort()).toEqual(
      [
        './attest',
        './attest/node',
        './attest/testing',
        './client',
        './infer',
        './ohttp',
        './policy',
        './seal',
        './translog',
      ].sort(),
    );
    for (const sub of Object.keys(pkg.exports)) {
      const specifier = `${pkg.name}${sub.slice(1)}`;
      const mod: Record<string, unknown> = await import(specifier);
      expect(Object.keys(mod).length, specifier).toBeGreaterThan(0);
    }
  });

  it('no entry point, nor the cloister binary, reaches a native engine or database driver through static imports', () => {
    const entries = { ...pkg.exports, ...pkg.bin };
    for (const [name, file] of Object.entries(entries)) {
      const { files, packages } = staticImports(file);
      // The walk itself must work: every entry point imports modules of its own.
      expect(files, name).toBeGreaterThan(1);
      for (const heavy of HEAVY) expect(packages.get(heavy), `${name} reaches ${heavy}`).toBeUndefined();
    }
    // And it does see one where it is imported: the ONNX engine's worker thread loads ONNX Runtime.
    expect(staticImports('dist/infer/engine/onnx-worker.js').packages.get('onnxruntime-node')).toEqual([
      'dist/infer/engine/onnx-worker.js',
      'onnxruntime-node',
    ]);
  });

  it('cloister/seal seals and opens a buffer with an HPKE key, and refuses a tampered one', async () => {
    const seal = await import('cloister/seal');
    const key = await seal.generateHpkeKeyPair();
    const plaintext = utf8.encode('weights that never leave the TEE in clear');
    const sealed = await seal.sealBytes(plaintext, {
      recipients: [{ type: 'hpke', publicKey: key.publicKey }],
      chunkSize: 16,
    });
    expect(seal.parseHeader(sealed.subarray(0, 4096)).recipients[0]?.keyId).toBe(
      await seal.hpkeKeyId(key.publicKey),
    );
    expect(await seal.openBytes(sealed, key)).toEqual(plaintext);
    const tampered = sealed.slice();
    tampered[tampered.length - 1]! ^= 1;
    await expect(seal.openBytes(tampered, key)).rejects.toMatchObject({ code: 'chunk-tampered' });
  });

  it('cloister/attest with cloister/attest/node verifies a real TDX quote against its collateral', async () => {
    const attest = await import('cloister/attest');
    const node = await import('cloister/attest/node');
    const quote = new Uint8Array(readFileSync(join(TDX, 'quote.bin')));
    expect(attest.detectKind(quote)).toBe('tdx');
    const a = await attest
      .createDefaultRegistry()
      .get('tdx')
      .appraiseEvidence(quote, {
        at: new Date('2025-07-01T00:00:00Z'),
        collateral: node.folderCollateral(TDX),
      });
    expect(a.status).toBe('affirming');
    expect(a.claims).toMatchObject({ tcb_status: 'UpToDate', fmspc: 'b0c06f000000' });
    expect(attest.REPORT_DATA_SIZE).toBe(64);
  });

  it('cloister/attest/testing forges sample evidence that cloister/attest parses, and binds report data', async () => {
    const attest = await import('cloister/attest');
    const testing = await import('cloister/attest/testing');
    const forged = await (await testing.createSampleForgery()).sign();
    expect(attest.detectKind(forged)).toBe('sample');
    const attester = await attest.createSampleAttester();
    const reportData = new Uint8Array(attest.REPORT_DATA_SIZE).fill(7);
    const options = { at: new Date(), collateral: attest.offlineSource, expectedReportData: reportData };
    const a = await attest.sampleVerifier.appraiseEvidence(await attester.attest(reportData), options);
    expect(a.kind).toBe('sample');
    await expect(
      attest.sampleVerifier.appraiseEvidence(await attester.attest(new Uint8Array(64)), options),
    ).rejects.toMatchObject({ code: 'report-data-mismatch' });
  });

  it('cloister/policy compiles and evaluates a resource policy', async () => {
    const policy = await import('cloister/policy');
    const compiled = policy.compilePolicy('tee == "tdx" && resource.repository == tenant');
    const submod = {
      status: 'affirming' as const,
      trust: { hardware: 2, configuration: 2, executables: 2, instance_identity: 2 },
      claims: {},
      kind: 'tdx',
      insecure: false,
      reasons: [],
    };
    const input = (tenant: string) => ({
      submods: { cpu0: submod },
      resource: { uri: 'kbs:///acme/models/llama', repository: 'acme', type: 'models', tag: 'llama' },
      tenant,
      now: new Date(),
      dev_mode: false,
    });
    expect(policy.evaluatePolicy(compiled, input('acme'))).toEqual({ allow: true, reasons: [] });
    expect(policy.evaluatePolicy(compiled, input('globex'))).toMatchObject({
      allow: false,
      publicMessage: policy.PUBLIC_DENIAL_MESSAGE,
    });
  });

  it('cloister/ohttp encapsulates a request a gateway key decapsulates', async () => {
    const ohttp = await import('cloister/ohttp');
    const key = await ohttp.generateGatewayKey(1);
    const config = ohttp.decodeKeyConfig(ohttp.encodeKeyConfig(key.config));
    const request = utf8.encode('POST /v1/chat/completions');
    const { encapsulated } = await ohttp.encapsulateRequest(config, request);
    const opened = await ohttp.decapsulateRequest(encapsulated, [key]);
    expect(opened.request).toEqual(request);
    const other = await ohttp.generateGatewayKey(1);
    await expect(ohttp.decapsulateRequest(encapsulated, [other])).rejects.toBeInstanceOf(ohttp.OhttpError);
  });

  it('cloister/translog proves a leaf included in a Merkle tree and refuses a wrong proof', async () => {
    const translog = await import('cloister/translog');
    const leaves = await Promise.all(['a', 'b', 'c'].map((s) => translog.leafHash(utf8.encode(s))));
    let range = translog.EMPTY_RANGE;
    for (const leaf of leaves) range = (await translog.appendToRange(range, leaf)).range;
    const root = await translog.rangeRoot(range);
    const ab = await translog.nodeHash(leaves[0]!, leaves[1]!);
    await expect(translog.verifyInclusion(2, 3, leaves[2]!, [ab], root)).resolves.toBeUndefined();
    await expect(translog.verifyInclusion(2, 3, leaves[2]!, [leaves[0]!], root)).rejects.toMatchObject({
      code: 'bad-inclusion-proof',
    });
  });

  it('cloister/client parses a client policy and refuses a bad one', async () => {
    const client = await import('cloister/client');
    const p = client.parseClientPolicy('{"tees": ["snp"], "minStatus": "warning"}');
    expect(p).toMatchObject({ tees: ['snp'], minStatus: 'warning' });
    expect(() => client.parseClientPolicy('{"minStatus": "none"}')).toThrow(client.PolicyFileError);
  });

  it('cloister/infer signs a response receipt that cloister/client verifies', async () => {
    const infer = await import('cloister/infer');
    const client = await import('cloister/client');
    const pair = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    const request = utf8.encode('request');
    const response = utf8.encode('response');
    const jws = await infer.signResponseReceipt(
      {
        type: infer.RESPONSE_RECEIPT_TYPE,
        iat: Math.floor(Date.now() / 1000),
        request: await infer.sha256Label(request),
        response: await infer.sha256Label(response),
        status: 200,
        modelDigest: null,
        identity: 'ab',
      },
      pair.privateKey,
    );
    const jwk = await crypto.subtle.exportKey('jwk', pair.publicKey);
    const body = await client.verifyResponseReceipt(jws, jwk as never, { request, response, identity: 'ab' });
    expect(body.status).toBe(200);
    await expect(
      client.verifyResponseReceipt(jws, jwk as never, {
        request,
        response: utf8.encode('other'),
        identity: 'ab',
      }),
    ).rejects.toMatchObject({ code: 'receipt-mismatch' });
  });
});
