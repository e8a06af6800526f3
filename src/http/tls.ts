/**
 * TLS for every Cloister server (Node-only), secure by default: a server listens with a certificate
 * and key read from PEM files, reloaded when either file changes (a renewed certificate needs no
 * restart), and refuses to listen in plain HTTP on any address but loopback unless the operator says
 * it stands behind a TLS-terminating proxy (`--insecure-http`, `insecureHttp`). Without that, admin
 * tokens and key values would cross the network in clear.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync, unwatchFile, watchFile } from 'node:fs';
import { createServer } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';

/**
 * insecure-listen: plain HTTP asked for on a non-loopback address; cannot-listen: the address cannot
 * be bound (in use, not ours); tls-files: the certificate or key cannot be read or do not make a pair;
 * ca-file: a client's CA file cannot be read or holds no certificate.
 */
export type HttpSetupCode = 'insecure-listen' | 'cannot-listen' | 'tls-files' | 'ca-file' | 'insecure-url';

export class HttpSetupError extends Error {
  override name = 'HttpSetupError';
  constructor(
    readonly code: HttpSetupCode,
    message: string,
  ) {
    super(message);
  }
}

/** PEM files of a server's certificate (chain, leaf first) and private key. */
export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

export interface TlsOptions extends TlsFiles {
  /**
   * How often the two files are looked at for changes (fs.watchFile polls their stat, which also
   * follows a file replaced by a rename, as certificate tools do); default 2000 ms.
   */
  pollMs?: number;
  /**
   * Where a reload is reported: the new pair in use, or a bad new pair kept out (once per change; the
   * server goes on with the pair it had). Default: stderr.
   */
  log?: (line: string) => void;
}

/** The certificate and key as PEM text, checked to make a pair Node can serve with. */
export function readTlsFiles(f: TlsFiles): { cert: string; key: string } {
  const read = (path: string, flag: string) => {
    try {
      return readFileSync(path, 'utf8');
    } catch (e) {
      throw new HttpSetupError(
        'tls-files',
        `${path}: cannot read the ${flag} file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      );
    }
  };
  const cert = read(f.certFile, 'TLS certificate');
  const key = read(f.keyFile, 'TLS key');
  secureContext(f, cert, key);
  return { cert, key };
}

function secureContext(f: TlsFiles, cert: string, key: string): SecureContext {
  try {
    // Node takes an empty string for "no certificate" (or key) and builds a context that fails every
    // handshake: a file caught half-written by a renewal must be refused, not served.
    const certificate = new X509Certificate(cert);
    if (!certificate.checkPrivateKey(createPrivateKey(key)))
      throw new Error('the key does not belong to the certificate');
    // OpenSSL refuses a key that does not belong to the certificate here, not at the first handshake.
    return createSecureContext({ cert, key });
  } catch (e) {
    throw new HttpSetupError(
      'tls-files',
      `${f.certFile}, ${f.keyFile}: not a PEM certificate and its private key (${(e as Error).message})`,
    );
  }
}

/** What a TLS server offers to reload its pair (node:https and node:http2 servers both have it). */
interface ReloadableServer {
  setSecureContext(options: { cert: string; key: string }): void;
}

/**
 * Watches the two files and puts a new pair into `server` when either changes; a pair that cannot be
 * read or does not match keeps the old one serving and is reported. Changes closer together than
 * `pollMs` make one reload, so a certificate and key written one after the other are read together.
 * Returns the function that stops watching.
 */
export function watchTlsFiles(server: ReloadableServer, o: TlsOptions): () => void {
  const pollMs = o.pollMs ?? 2000;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  let timer: NodeJS.Timeout | undefined;
  const reload = () => {
    timer = undefined;
    try {
      server.setSecureContext(readTlsFiles(o));
      log(`TLS: certificate reloaded from ${o.certFile}`);
    } catch (e) {
      log(`TLS: kept the certificate in use: ${(e as Error).message}`);
    }
  };
  const changed = () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(reload, pollMs);
    timer.unref();
  };
  // Not persistent: watching alone must not keep a stopped server's process alive.
  for (const p of [o.certFile, o.keyFile]) watchFile(p, { interval: pollMs, persistent: false }, changed);
  return () => {
    if (timer) clearTimeout(timer);
    for (const p of [o.certFile, o.keyFile]) unwatchFile(p, changed);
  };
}

/** 127.0.0.0/8, ::1 (also as an IPv4-mapped address) and `localhost`: only this machine can connect. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  const parts = v4.split('.');
  return (
    parts.length === 4 && parts[0] === '127' && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)
  );
}

/**
 * The shared listen guard: plain HTTP only on loopback, unless the operator said `insecureHttp` (a
 * TLS-terminating proxy in front). Called before a server loads anything, so the refusal comes first.
 */
export function checkListen(o: { host: string; port: number; tls: boolean; insecureHttp?: boolean }): void {
  if (o.tls || o.insecureHttp || isLoopback(o.host)) return;
  throw new HttpSetupError(
    'insecure-listen',
    `refusing plain HTTP on ${hostPort(o.host, o.port)} (not loopback): give --tls-cert FILE --tls-key FILE, or --insecure-http if a TLS-terminating proxy is in front`,
  );
}

/**
 * Whether `host:port` can be bound now: a server that loads models first would otherwise find the port
 * taken only after minutes of work. Port 0 (any free port) always can.
 */
export async function probeListen(host: string, port: number): Promise<void> {
  if (port === 0) return;
  await new Promise<void>((resolve, reject) => {
    const s = createServer();
    s.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new HttpSetupError(
          'cannot-listen',
          `cannot listen on ${hostPort(host, port)}: ${e.code === 'EADDRINUSE' ? 'the port is in use; choose another with --port' : (e.code ?? e.message)}`,
        ),
      ),
    );
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve()));
  });
}

function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}
