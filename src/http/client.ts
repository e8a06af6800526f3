/**
 * The client side of TLS (Node-only; a light door, so that CLI verbs reach it without the server
 * stack): a `fetch` that trusts a private CA besides Node's own roots (`--cacert FILE`, or
 * `CLOISTER_CACERT`), for brokers and inference servers whose certificates an operator's own CA
 * signed, and whose failures to verify a certificate read as one line saying how to fix them.
 */
import { readFile } from 'node:fs/promises';
import { rootCertificates } from 'node:tls';
import { Agent, fetch as undiciFetch } from 'undici';
import { HttpSetupError, isLoopback } from './tls.js';

/** The environment variable that gives the CA file when `--cacert` does not. */
export const CACERT_ENV = 'CLOISTER_CACERT';

/** A CA file's PEM text: readable, with at least one certificate, each of which parses. */
export async function readCaFile(file: string): Promise<string> {
  let pem: string;
  try {
    pem = await readFile(file, 'utf8');
  } catch (e) {
    throw new HttpSetupError(
      'ca-file',
      `${file}: cannot read the CA file (--cacert or ${CACERT_ENV}): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  const { X509Certificate } = await import('node:crypto');
  try {
    if (blocks.length === 0) throw new Error('no PEM certificate in it');
    for (const b of blocks) new X509Certificate(b);
  } catch (e) {
    throw new HttpSetupError(
      'ca-file',
      `${file}: not a PEM CA certificate bundle (--cacert or ${CACERT_ENV}): ${(e as Error).message}`,
    );
  }
  return pem;
}

/**
 * Admin tokens, key values and the public keys a broker publishes (trust anchors for receipts and the
 * log) must not cross a network in clear: a plain-HTTP URL is accepted for a loopback host only, unless
 * the caller says otherwise (`--insecure-http`: a trusted network, or a TLS-terminating proxy beside it).
 */
export function checkClientUrl(url: string, insecureHttp = false): void {
  const u = new URL(url);
  if (u.protocol !== 'http:' || insecureHttp || isLoopback(u.hostname)) return;
  throw new HttpSetupError(
    'insecure-url',
    `refusing plain HTTP to ${u.host} (not loopback): admin tokens and keys would cross the network in clear; use https://, or --insecure-http`,
  );
}

/** A fetch that trusts the certificates in `caPem` as well as Node's default roots. */
export function fetchTrusting(caPem: string): typeof fetch {
  const dispatcher = new Agent({ connect: { ca: [...rootCertificates, caPem] } });
  // undici's fetch is the one Node ships, typed apart from the DOM's; the answers are the same Response.
  const f = (input: RequestInfo | URL, init?: RequestInit) =>
    undiciFetch(input as Parameters<typeof undiciFetch>[0], {
      ...(init as Parameters<typeof undiciFetch>[1]),
      dispatcher,
    });
  return f as unknown as typeof fetch;
}

/** The OpenSSL and Node codes of a server certificate the client could not verify. */
const UNTRUSTED = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/**
 * The fetch a CLI verb talks to brokers and inference servers with: Node's own, or one trusting the
 * CA in `caFile` (`--cacert`, default `CLOISTER_CACERT`). A certificate that does not verify fails as
 * a TypeError, as fetch fails, whose message is one line naming the server, the reason and the fix.
 */
export async function clientFetch(
  caFile: string | undefined = process.env[CACERT_ENV],
): Promise<typeof fetch> {
  const base = caFile ? fetchTrusting(await readCaFile(caFile)) : globalThis.fetch.bind(globalThis);
  return async (input, init) => {
    try {
      return await base(input, init);
    } catch (e) {
      const cause = (e as { cause?: NodeJS.ErrnoException }).cause;
      if (!cause?.code || !UNTRUSTED.has(cause.code)) throw e;
      const url = input instanceof Request ? input.url : String(input);
      // The code tells callers that retry on network errors (the TEE's broker client) not to: asking
      // again does not make a certificate trusted.
      throw Object.assign(
        new TypeError(
          `${new URL(url).origin}: TLS certificate not trusted (${cause.message}); ${caFile ? `the CA in ${caFile} did not sign it` : `give --cacert FILE (or set ${CACERT_ENV}) with the CA that signed it`}`,
        ),
        { code: 'untrusted-certificate' as const },
      );
    }
  };
}
