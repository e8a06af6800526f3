#!/usr/bin/env node
/**
 * The key broker for bench/kbs.js, in a process of its own so that it does not share an event loop
 * with the load generator. Argument: a folder prepared by bench/kbs.js holding `tdx-root.der` (the test
 * authority's root) and `collateral/` (its PCS answers as files). It starts the broker on a loopback
 * port with a SQLite store in that folder and rate limiting off, stores one resource through the admin
 * API, and prints one JSON line `{url, resource}` on stdout. Then, for each line "stats" on stdin, it
 * prints `{cpu_ms}` (this process's user + system CPU so far); on "exit" (or end of stdin) it stops.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

const { directorySource } = await import('../dist/attest/collateral/node.js');
const { ADMIN_AUDIENCE } = await import('../dist/kbs/admin.js');
const { startBroker } = await import('../dist/kbs/app.js');
const { DEFAULT_CONFIG } = await import('../dist/kbs/config.js');

const dir = process.argv[2];
if (!dir) throw new Error('usage: node bench/kbs-server.js <folder prepared by bench/kbs.js>');

const admin = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
writeFileSync(
  join(dir, 'admin.pub.jwk'),
  JSON.stringify([{ ...(await exportJWK(admin.publicKey)), alg: 'EdDSA' }]),
);
writeFileSync(
  join(dir, 'master.key'),
  Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64'),
);

const broker = await startBroker(
  {
    ...DEFAULT_CONFIG,
    port: 0,
    db: `sqlite:${join(dir, 'kbs.db')}`,
    adminKeysFile: join(dir, 'admin.pub.jwk'),
    masterKeyFile: join(dir, 'master.key'),
    rateLimit: { perSecond: 0, burst: 0 },
  },
  {
    collateral: directorySource(join(dir, 'collateral')),
    trustAnchors: { tdx: [new Uint8Array(readFileSync(join(dir, 'tdx-root.der')))] },
    log: (l) => process.stderr.write(`[broker] ${l}\n`),
  },
);

const resource = 'owner/models/kek1';
const token = await new SignJWT({ role: 'admin' })
  .setProtectedHeader({ alg: 'EdDSA' })
  .setSubject('bench')
  .setAudience(ADMIN_AUDIENCE)
  .setIssuedAt()
  .setJti(crypto.randomUUID())
  .setExpirationTime('5m')
  .sign(admin.privateKey);
const put = await fetch(new URL(`/admin/v1/resources/${resource}`, broker.url), {
  method: 'PUT',
  headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
  body: new TextEncoder().encode('the model key'),
});
if (put.status !== 201) throw new Error(`storing the resource failed: ${put.status} ${await put.text()}`);

console.log(JSON.stringify({ url: broker.url, resource }));

const stop = async () => {
  await broker.close();
  process.exit(0);
};
const lines = createInterface({ input: process.stdin });
lines.on('line', (l) => {
  if (l.trim() === 'stats') {
    const u = process.cpuUsage();
    console.log(JSON.stringify({ cpu_ms: (u.user + u.system) / 1000 }));
  } else if (l.trim() === 'exit') void stop();
});
lines.on('close', () => void stop());
