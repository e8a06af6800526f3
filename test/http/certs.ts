/**
 * Certificates the TLS tests make themselves: a CA, and leaf certificates it signs for this machine
 * (localhost, 127.0.0.1, ::1), written as PEM files a server and a client can be given.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// @peculiar/x509 needs the polyfill loaded first (tsyringe), as src/attest's users of it do.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export interface TestLeaf {
  certPem: string;
  keyPem: string;
  /** The certificate's serial number (hex), to tell two leaves apart in a handshake. */
  serial: string;
}

export interface TestCa {
  certPem: string;
  /** A server certificate for this machine, signed by the CA. */
  leaf(name?: string): Promise<TestLeaf>;
}

function serial(): string {
  // Positive and 16 bytes long, as RFC 5280 asks.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0]! & 0x7f) | 0x01;
  return Buffer.from(b).toString('hex');
}

export async function makeCa(name = 'Cloister test CA'): Promise<TestCa> {
  const keys = (await crypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const now = Date.now();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 86_400_000);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name}`,
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: EC,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return {
    certPem: ca.toString('pem'),
    async leaf(cn = 'localhost') {
      const leafKeys = (await crypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
      const sn = serial();
      const cert = await x509.X509CertificateGenerator.create({
        serialNumber: sn,
        subject: `CN=${cn}`,
        issuer: ca.subject,
        notBefore,
        notAfter,
        publicKey: leafKeys.publicKey,
        signingKey: keys.privateKey,
        signingAlgorithm: EC,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
          new x509.SubjectAlternativeNameExtension([
            { type: 'dns', value: 'localhost' },
            { type: 'ip', value: '127.0.0.1' },
            { type: 'ip', value: '::1' },
          ]),
          await x509.AuthorityKeyIdentifierExtension.create(keys.publicKey),
        ],
      });
      const pkcs8 = await crypto.subtle.exportKey('pkcs8', leafKeys.privateKey);
      return {
        certPem: cert.toString('pem'),
        keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY'),
        serial: sn,
      };
    },
  };
}

/** Files for a server (cert.pem, key.pem) and its clients (ca.pem) in a fresh folder. */
export async function tlsFiles(ca?: TestCa): Promise<{
  dir: string;
  ca: TestCa;
  caFile: string;
  certFile: string;
  keyFile: string;
  leaf: TestLeaf;
}> {
  const authority = ca ?? (await makeCa());
  const dir = mkdtempSync(join(tmpdir(), 'cloister-tls-'));
  const leaf = await authority.leaf();
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text, { mode: 0o600 });
    return join(dir, name);
  };
  return {
    dir,
    ca: authority,
    caFile: file('ca.pem', authority.certPem),
    certFile: file('cert.pem', leaf.certPem),
    keyFile: file('key.pem', leaf.keyPem),
    leaf,
  };
}
