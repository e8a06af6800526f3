/**
 * A small key broker for agent tests: the real KBS protocol (auth → attest → resource) over node:http,
 * verifying `sample` evidence with the real sample verifier against the report data the protocol
 * requires, issuing a real EAR and returning resources as JWE to the TEE's key. What the real broker
 * adds (policy in CEL, storage, the transparency log) is replaced by a deny list.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { issueEar } from '../../src/attest/ear/index.js';
import { sampleVerifier } from '../../src/attest/sample/index.js';
import { encryptResource } from '../../src/kbs/jwe.js';
import { utf8 } from '../../src/util/bytes.js';
import {
  deviceEvidence,
  parseAttestation,
  primaryEvidenceBytes,
  primaryRuntimeDataHash,
  reportDataField,
  type TeePubkey,
} from '../../src/wire/kbs.js';
import { problem } from '../../src/wire/problem.js';

export interface FakeKbs {
  url: string;
  resources: Map<string, Uint8Array>;
  /** Resource paths the "policy" refuses. */
  deny: Set<string>;
  /** Answer this many next requests with 503 (to test retries). */
  failNext: number;
  /** Every request as "METHOD path". */
  log: string[];
  /** The init-data of each attestation that sent one. */
  initData: { format: string; body: string }[];
  earKey: CryptoKeyPair;
  close(): Promise<void>;
}

async function body(req: IncomingMessage): Promise<unknown> {
  const parts: Buffer[] = [];
  for await (const p of req) parts.push(p as Buffer);
  return JSON.parse(Buffer.concat(parts).toString('utf8'));
}

function fail(res: ServerResponse, status: number, type: string, detail: string): void {
  res.writeHead(status, { 'content-type': 'application/problem+json' });
  res.end(JSON.stringify(problem(status, type, detail)));
}

export async function startFakeKbs(): Promise<FakeKbs> {
  const earKey = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
  const sessions = new Map<string, { nonce: string; tee: string; key?: TeePubkey }>();
  const kbs: FakeKbs = {
    url: '',
    resources: new Map(),
    deny: new Set(),
    failNext: 0,
    log: [],
    initData: [],
    earKey,
    close: async () => {},
  };
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    kbs.log.push(`${req.method} ${path}`);
    if (kbs.failNext > 0) {
      kbs.failNext--;
      return fail(res, 503, 'unavailable', 'try again');
    }
    const sid = /kbs-session-id=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];
    if (req.method === 'POST' && path === '/kbs/v0/auth') {
      const r = (await body(req)) as { tee: string };
      const id = crypto.randomUUID();
      const nonce = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
      sessions.set(id, { nonce, tee: r.tee });
      res.writeHead(200, {
        'content-type': 'application/json',
        'set-cookie': `kbs-session-id=${id}; HttpOnly`,
      });
      return res.end(JSON.stringify({ nonce, 'extra-params': '' }));
    }
    const s = sid ? sessions.get(sid) : undefined;
    if (!s) return fail(res, 401, 'no-session', 'start with POST /kbs/v0/auth');
    if (req.method === 'POST' && path === '/kbs/v0/attest') {
      const att = parseAttestation(await body(req));
      if (att['init-data']) kbs.initData.push(att['init-data']);
      const rd = att['runtime-data'];
      const additional = att['tee-evidence'].additional_evidence;
      deviceEvidence(additional);
      const expected = reportDataField(await primaryRuntimeDataHash(rd['tee-pubkey'], s.nonce, additional));
      const { evidence } = primaryEvidenceBytes(s.tee, att['tee-evidence'].primary_evidence);
      let appraisal: Awaited<ReturnType<typeof sampleVerifier.appraiseEvidence>>;
      try {
        appraisal = await sampleVerifier.appraiseEvidence(evidence, {
          at: new Date(),
          collateral: { get: async () => undefined },
          expectedReportData: expected,
        });
      } catch (e) {
        return fail(res, 401, 'attestation-failed', (e as Error).message);
      }
      s.key = rd['tee-pubkey'];
      const token = await issueEar(
        { cpu0: appraisal },
        { signingKey: earKey.privateKey, extraClaims: { 'cloister.tee-pubkey': rd['tee-pubkey'] } },
      );
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ token }));
    }
    const m = /^\/kbs\/v0\/resource\/(.+)$/.exec(path);
    if (req.method === 'GET' && m) {
      if (!s.key) return fail(res, 401, 'not-attested', 'attest first');
      const rp = m[1]!;
      if (kbs.deny.has(rp)) return fail(res, 403, 'policy-denied', `policy refuses ${rp} to this TEE`);
      const v = kbs.resources.get(rp);
      if (!v) return fail(res, 404, 'not-found', `no resource ${rp}`);
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(await encryptResource(v, s.key)));
    }
    fail(res, 404, 'not-found', path);
  };
  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e) => fail(res, 400, 'bad-request', (e as Error).message));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  kbs.url = `http://127.0.0.1:${port}`;
  kbs.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return kbs;
}

export const text = (s: string) => utf8.encode(s);
