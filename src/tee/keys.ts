/**
 * The bridge between the in-TEE attesters (src/tee/evidence) and the KBS client (src/tee/kbs-client.ts),
 * and the key lookups the agent makes through it. Web-standard, like both sides.
 *
 * Evidence goes out in the JSON shapes `primaryEvidenceBytes` (src/wire/kbs.ts) reads back:
 * tdx/sgx `{"quote": base64}` (as guest-components sends it), snp `{"report": base64, "vcek"?: base64}`
 * (the VCEK or VLEK taken from the certificate table the host attached, so the broker needs no AMD KDS
 * round trip), sample evidence as its JSON document (or, for a Trustee KBS, guest-components'
 * `{svn, report_data}`). GPU evidence goes into `additional_evidence` as
 * `{"nvidia": {"gpus": [ … ]}}`, GPU i answering deriveGpuNonce(deviceBase, i).
 */

import { cocoSampleEvidence, GUID_VCEK, GUID_VLEK, parseCertTable } from '../attest/index.js';
import type { Header } from '../seal/index.js';
import { type KekKey, keyFromJwk } from '../seal/index.js';
import { toBase64, utf8 } from '../util/index.js';
import { collectGpuEvidence } from './evidence/composite.js';
import type { GpuAttester } from './evidence/nvml.js';
import type { CpuAttester, CpuEvidence, CpuKind } from './evidence/types.js';
import type { Attester } from './kbs-client.js';

/** What the agent needs from a key broker; KbsClient satisfies it, tests may stand in a fake. */
export interface ResourceSource {
  /** A resource's value, `<repo>/<type>/<tag>`. */
  getResource(path: string): Promise<Uint8Array>;
  /** The EAR token of the current attestation. */
  token(): Promise<string>;
}

/** A refusal or failure the agent reports to an operator; `code` is stable for tests and the local API. */
export class AgentError extends Error {
  override name = 'AgentError';
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The primary_evidence JSON value for evidence an attester collected. */
export function encodePrimaryEvidence(e: CpuEvidence): unknown {
  switch (e.kind) {
    case 'tdx':
    case 'sgx':
      return { quote: toBase64(e.evidence) };
    case 'snp': {
      const out: Record<string, string> = { report: toBase64(e.evidence) };
      if (e.auxblob && e.auxblob.length > 0) {
        const entries = parseCertTable(e.auxblob);
        const vcek = entries.find((x) => x.guid === GUID_VCEK)?.data;
        const vlek = entries.find((x) => x.guid === GUID_VLEK)?.data;
        if (vcek) out.vcek = toBase64(vcek);
        if (vlek) out.vlek = toBase64(vlek);
      }
      return out;
    }
    case 'sample':
      // Sample evidence is a JSON document; the broker serialises it back to the same bytes.
      return JSON.parse(utf8.decode(e.evidence));
  }
}

/**
 * GPU evidence in the `additional_evidence` string. NVIDIA's serialisation is JSON, so each GPU goes in
 * as the parsed value (the broker re-serialises it); anything that is not JSON text goes in as a string.
 */
export function encodeGpuEvidence(gpus: readonly Uint8Array[]): string {
  if (gpus.length === 0) return '';
  const items = gpus.map((g) => {
    try {
      return JSON.parse(utf8.decode(g)) as unknown;
    } catch {
      return utf8.decode(g);
    }
  });
  return JSON.stringify({ nvidia: { gpus: items } });
}

/**
 * How sample evidence goes out: `cloister` is Cloister's signed form (with a measurement policies can
 * check); `coco` is guest-components' unsigned `{svn, report_data}`, the only form Trustee's sample
 * verifier reads. Both are the insecure software TEE; `cloister kbs serve` accepts either.
 */
export type SampleEvidenceForm = 'cloister' | 'coco';

/** KbsClient's Attester for a detected CPU TEE and, when given, its confidential GPUs. */
export function kbsAttester(
  kind: CpuKind,
  cpu: CpuAttester,
  gpu?: GpuAttester,
  options: { sampleForm?: SampleEvidenceForm } = {},
): Attester {
  return {
    tee: kind,
    async primaryEvidence(reportData) {
      // Nothing to collect: CoCo sample evidence is the report data and a constant svn.
      if (kind === 'sample' && options.sampleForm === 'coco') return cocoSampleEvidence(reportData);
      const e = await cpu.collect(reportData);
      if (e.kind !== kind)
        throw new AgentError('tee-changed', `evidence is ${e.kind} but the TEE was detected as ${kind}`);
      return encodePrimaryEvidence(e);
    },
    ...(gpu && gpu.count > 0
      ? {
          async additionalEvidence(deviceBase: Uint8Array) {
            const gpus = await collectGpuEvidence(gpu, deviceBase);
            return encodeGpuEvidence(gpus.map((g) => g.evidence));
          },
        }
      : {}),
  };
}

/**
 * One segment of a resource path: letters, digits, `.`, `_`, `-`, but not starting with `.`. A `.` or
 * `..` segment would be routed by its raw text (routeResources) while the broker's URL resolves it
 * away (`kbs:///./acme/kek` reaching acme's resource through the primary broker), so none is accepted.
 */
const SEGMENT = '[A-Za-z0-9_-][A-Za-z0-9._-]*';
const KBS_URI = new RegExp(`^kbs:///(${SEGMENT}/${SEGMENT}/${SEGMENT})$`);

/** `kbs:///repo/type/tag` → `repo/type/tag`. */
export function resourcePathOf(uri: string): string {
  const m = KBS_URI.exec(uri);
  if (!m)
    throw new AgentError(
      'bad-uri',
      `"${uri}" is not a key broker resource URI (kbs:///<repo>/<type>/<tag>, no segment starting with '.')`,
    );
  return m[1]!;
}

/**
 * A KEK from a resource value. Two forms are accepted: the JWK `cloister keygen --kek` writes
 * (`{"kty":"oct","k":…}`, what `cloister kbs resource put` stores in the documented flow), and the bare
 * 32 key bytes. A JWK naming another URI in `kid` is refused: it would be the wrong key under the right name.
 */
export function kekFromResource(value: Uint8Array, uri: string): KekKey {
  if (value.length === 32) return { kind: 'kek', uri, secret: value };
  let text: string;
  try {
    text = utf8.decode(value);
  } catch {
    throw new AgentError(
      'bad-kek',
      `resource ${uri} is neither 32 key bytes nor a JWK (${value.length} bytes of binary data)`,
    );
  }
  let key: ReturnType<typeof keyFromJwk>;
  try {
    key = keyFromJwk(text, `resource ${uri}`);
  } catch (e) {
    throw new AgentError('bad-kek', (e as Error).message);
  }
  if (key.kind !== 'kek')
    throw new AgentError(
      'bad-kek',
      `resource ${uri} is not a key-encryption key (want a JWK with kty "oct")`,
    );
  if (key.uri !== undefined && key.uri !== uri)
    throw new AgentError('bad-kek', `resource ${uri} holds the KEK of ${key.uri}, not its own`);
  return { kind: 'kek', uri, secret: key.secret };
}

/** Fetches KEKs from a broker once each, for the agent's lifetime. */
export class KekCache {
  private readonly keys = new Map<string, Promise<KekKey>>();
  constructor(private readonly source: ResourceSource) {}

  get(uri: string): Promise<KekKey> {
    const path = resourcePathOf(uri);
    let p = this.keys.get(path);
    if (!p) {
      p = this.source.getResource(path).then((v) => kekFromResource(v, uri));
      // A failed fetch is not remembered: the next request asks the broker again.
      p.catch(() => this.keys.delete(path));
      this.keys.set(path, p);
    }
    return p;
  }

  /** The KEK for a sealed file: its first `kbs` recipient the broker releases. */
  async forHeader(header: Header, what: string): Promise<KekKey> {
    const uris = header.recipients.filter((r) => r.type === 'kbs').map((r) => r.keyId);
    if (uris.length === 0) {
      throw new AgentError(
        'no-kbs-recipient',
        `${what} has no key-broker recipient (its recipients: ${header.recipients.map((r) => r.keyId).join(', ')}); seal it with --to kbs:///<repo>/<type>/<tag>=KEK`,
      );
    }
    let last: unknown;
    for (const uri of uris) {
      try {
        return await this.get(uri);
      } catch (e) {
        last = e;
      }
    }
    throw last;
  }

  /** Zeroes every cached key (the agent's exit path). */
  async clear(): Promise<void> {
    const all = [...this.keys.values()];
    this.keys.clear();
    for (const p of all) (await p.catch(() => undefined))?.secret.fill(0);
  }
}

const REPO = new RegExp(`^${SEGMENT}$`);
const RESOURCE_PATH = new RegExp(`^${SEGMENT}/${SEGMENT}/${SEGMENT}$`);

/**
 * A resource source that fetches each resource from the broker of its repository: `routes` maps a
 * repository (the first segment of `kbs:///<repo>/<type>/<tag>`) to the broker that holds it, every
 * other repository goes to `primary`. Two owners, two brokers: the model vendor's broker releases the
 * base model's key, the company's broker the adapter's, each after its own attestation of this TEE
 * under its own policy. Everything but `getResource` (the attestation token the server attests with,
 * a training broker's checkpoint counter and receipt log) is `primary`'s, called on `primary` itself.
 */
export function routeResources<T extends ResourceSource>(
  primary: T,
  routes: ReadonlyMap<string, ResourceSource>,
): T {
  for (const repo of routes.keys()) {
    if (!REPO.test(repo))
      throw new AgentError(
        'bad-route',
        `"${repo}" is not a key broker repository name (letters, digits, . _ -, not starting with '.')`,
      );
  }
  if (routes.size === 0) return primary;
  const getResource = async (path: string): Promise<Uint8Array> => {
    // The route is chosen by the first segment as written: a path the broker's URL would resolve
    // differently (`./acme/x/y`, `a/../acme/x`) must not reach any broker.
    if (!RESOURCE_PATH.test(path))
      throw new AgentError(
        'bad-uri',
        `"${path}" is not a key broker resource path (<repo>/<type>/<tag>, no segment starting with '.')`,
      );
    const repo = path.split('/', 1)[0]!;
    const routed = routes.get(repo);
    if (!routed) return primary.getResource(path);
    try {
      return await routed.getResource(path);
    } catch (e) {
      // Two brokers: say which one refused.
      if (e instanceof Error) e.message = `${e.message} (the broker routed for repository ${repo})`;
      throw e;
    }
  };
  // A proxy rather than a copy: T may be a class (KbsClient) whose other methods keep their `this`.
  return new Proxy(primary, {
    get(target, prop) {
      if (prop === 'getResource') return getResource;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}
