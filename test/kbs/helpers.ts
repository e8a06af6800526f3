import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createSampleAttester } from '../../src/attest/index.js';
import { ADMIN_AUDIENCE } from '../../src/kbs/admin.js';
import { type RunningBroker, type StartOptions, startBroker } from '../../src/kbs/app.js';
import type { Attester } from '../../src/kbs/client.js';
import { DEFAULT_CONFIG, type KbsConfig } from '../../src/kbs/config.js';
import { bs } from '../../src/util/bytes.js';

export interface TestBroker extends RunningBroker {
  admin(role?: string, tenant?: string): Promise<string>;
  call(method: string, path: string, token: string, body?: Uint8Array | object): Promise<Response>;
  lines: string[];
}

/** A broker on a random port with an admin key whose tokens the tests can mint. */
export async function testBroker(
  config: Partial<KbsConfig> = {},
  opts: StartOptions = {},
): Promise<TestBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'cloister-kbs-'));
  const { privateKey, publicKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  writeFileSync(
    join(dir, 'admin.pub.jwk'),
    JSON.stringify([{ ...(await exportJWK(publicKey)), alg: 'EdDSA' }]),
  );
  writeFileSync(
    join(dir, 'master.key'),
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
  );
  const lines: string[] = [];
  const running = await startBroker(
    {
      ...DEFAULT_CONFIG,
      port: 0,
      db: `sqlite:${join(dir, 'kbs.db')}`,
      adminKeysFile: join(dir, 'admin.pub.jwk'),
      masterKeyFile: join(dir, 'master.key'),
      rateLimit: { perSecond: 0, burst: 0 },
      ...config,
    },
    { log: (l) => lines.push(l), ...opts },
  );
  return {
    ...running,
    lines,
    admin: (role = 'admin', tenant?: string) =>
      new SignJWT({ role, ...(tenant ? { tenant } : {}) })
        .setProtectedHeader({ alg: 'EdDSA' })
        .setSubject('test')
        .setAudience(ADMIN_AUDIENCE)
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(privateKey),
    call: (method, path, token, body) =>
      fetch(new URL(path, running.url), {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body instanceof Uint8Array
            ? { 'content-type': 'application/octet-stream' }
            : body
              ? { 'content-type': 'application/json' }
              : {}),
        },
        ...(body instanceof Uint8Array ? { body: bs(body) } : body ? { body: JSON.stringify(body) } : {}),
      }),
  };
}

/** The sample TEE as a KBS-client attester; `tamper` lets a test break the binding. */
export async function sampleAttester(
  o: { debug?: boolean; tamper?: (rd: Uint8Array) => Uint8Array } = {},
): Promise<Attester> {
  const a = await createSampleAttester(o.debug ? { debug: true } : {});
  return {
    tee: 'sample',
    async primaryEvidence(reportData) {
      return JSON.parse(
        new TextDecoder().decode(await a.attest(o.tamper ? o.tamper(reportData) : reportData)),
      );
    },
  };
}
