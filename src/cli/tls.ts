/**
 * The TLS flags every verb shares: `--tls-cert`, `--tls-key` and `--insecure-http` on the servers
 * (`kbs serve`, `serve`), `--cacert` (default `CLOISTER_CACERT`) on every verb that connects to a
 * broker or an inference server. The machinery is src/http (tls.ts, client.ts).
 */
import { Option } from 'commander';
import { FlagError } from './io.js';

/** `--cacert FILE`: CAs to trust, besides Node's roots, for a server whose certificate they signed. */
export const cacertOption = (): Option =>
  new Option(
    '--cacert <file>',
    "PEM file of CA certificates to trust besides Node's own (for a broker or server with a private CA)",
  ).env('CLOISTER_CACERT');

export interface TlsServeCliOptions {
  tlsCert?: string;
  tlsKey?: string;
  insecureHttp?: boolean;
}

// The server flags: HTTPS from two PEM files, or plain HTTP off loopback only when asked for.
export const tlsCertOption = (): Option =>
  new Option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (chain); reloaded when it changes');
export const tlsKeyOption = (): Option =>
  new Option('--tls-key <file>', 'the PEM private key of --tls-cert; reloaded when it changes');
export const insecureHttpOption = (): Option =>
  new Option(
    '--insecure-http',
    'allow plain HTTP on a non-loopback --host (only behind a TLS-terminating proxy)',
  );

/** The certificate and key files the flags name, if any; one without the other is refused. */
export function tlsFilesOf(o: TlsServeCliOptions): { certFile: string; keyFile: string } | undefined {
  if (!o.tlsCert !== !o.tlsKey) throw new FlagError('give --tls-cert FILE and --tls-key FILE together');
  return o.tlsCert && o.tlsKey ? { certFile: o.tlsCert, keyFile: o.tlsKey } : undefined;
}
