/**
 * The guest side of the KBS protocol (runs inside the TEE; web-standard so it also runs in a browser
 * for tests and tooling): an ephemeral P-256 key per session, the report-data binding the broker
 * expects, composite CPU + GPU evidence, token reuse, retries with backoff and clear errors.
 */
import { type FlattenedJWE, flattenedDecrypt } from 'jose';
import { bs } from '../util/index.js';
import {
  bindingReportData,
  deviceRuntimeDataHash,
  type EcPublicJwk,
  KBS_PROTOCOL_VERSION,
} from '../wire/index.js';

/** Produces evidence for the broker's challenge. */
export interface Attester {
  tee: string;
  /** Primary evidence (the JSON value sent as primary_evidence) for 64 bytes of report data. */
  primaryEvidence(reportData: Uint8Array): Promise<unknown>;
  /** Device evidence for the device nonce base (SHA-384 of {"tee-pubkey","nonce"}), or "" without devices. */
  additionalEvidence?(deviceBase: Uint8Array): Promise<string>;
}

export interface KbsClientOptions {
  url: string;
  attester: Attester;
  fetch?: typeof fetch;
  /** Attempts for transient failures (network errors, 429, 5xx); default 4. */
  retries?: number;
  /** First backoff in ms, doubled each retry; default 200. */
  backoffMs?: number;
  timeoutMs?: number;
  /**
   * The TEE's CoCo init-data, exactly as the host got it (its digest is in the evidence's TDX
   * mr_config_id or SNP host_data); the broker checks it and shows its contents to policies.
   */
  initData?: { format: 'toml' | 'json'; body: string };
}

/**
 * Why a broker request failed: `unreachable` (no answer after the retries), `refused` (the broker
 * answered with an error), `checkpoint-conflict` (a checkpoint advance from anything but the checkpoint
 * the broker holds: rollback or fork; the message says what it holds), `protocol` (an answer that does
 * not follow the protocol).
 */
export type KbsClientErrorCode = 'unreachable' | 'refused' | 'checkpoint-conflict' | 'protocol';

export class KbsClientError extends Error {
  override name = 'KbsClientError';
  readonly code: KbsClientErrorCode;
  constructor(
    message: string,
    readonly status?: number,
    readonly type?: string,
    code?: KbsClientErrorCode,
  ) {
    super(message);
    this.code =
      code ??
      (type === 'checkpoint-conflict'
        ? 'checkpoint-conflict'
        : status === undefined
          ? 'unreachable'
          : 'refused');
  }
}

/** A training job's checkpoint as the broker holds it (number from 1; SHA-256 of the sealed checkpoint, hex). */
export interface CheckpointRef {
  number: number;
  sha256: string;
}

interface Session {
  cookie: string;
  token: string;
  keyPair: CryptoKeyPair;
}

export class KbsClient {
  private session?: Session;
  private readonly fetch: typeof fetch;

  constructor(private readonly o: KbsClientOptions) {
    this.fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** The EAR token of the current session (attesting first if needed). */
  async token(): Promise<string> {
    return (await this.ensureSession()).token;
  }

  /** A resource's value, decrypted with the session's ephemeral key. */
  async getResource(path: string): Promise<Uint8Array> {
    let s = await this.ensureSession();
    let res = await this.request(`/kbs/v0/resource/${path}`, {
      method: 'GET',
      headers: { cookie: s.cookie },
    });
    if (res.status === 401) {
      // The session expired or was evicted: attest once more.
      this.session = undefined;
      s = await this.ensureSession();
      res = await this.request(`/kbs/v0/resource/${path}`, { method: 'GET', headers: { cookie: s.cookie } });
    }
    await this.check(res, `resource ${path}`);
    const { plaintext } = await flattenedDecrypt((await res.json()) as FlattenedJWE, s.keyPair.privateKey);
    return plaintext;
  }

  /**
   * The latest checkpoint the broker holds for a training job (`job`: hex SHA-256 of its manifest), or
   * null before the first. The session's init-data (`initData`) must name the job.
   */
  async checkpointLatest(job: string): Promise<CheckpointRef | null> {
    const res = await this.sessionRequest(`/cloister/v1/train/${job}/checkpoint`, { method: 'GET' });
    if (res.status === 404) {
      const problem = await problemOf(res);
      // Only the broker's own answer means "none yet"; a broker without this route is not one.
      if (problem.type === 'no-checkpoint') return null;
      throw refusal(res, problem, `checkpoint of job ${job}`);
    }
    await this.check(res, `checkpoint of job ${job}`);
    return checkpointRef(await res.json(), 'the broker answered a checkpoint');
  }

  /**
   * Moves the job's checkpoint from `prev` (null: none yet) to `next` (number prev.number + 1) by
   * compare-and-set. Throws a KbsClientError with code `checkpoint-conflict`, and the broker's account
   * of what it holds, when the broker holds another checkpoint than `prev` (a rollback or a fork).
   */
  async checkpointAdvance(job: string, prev: CheckpointRef | null, next: CheckpointRef): Promise<void> {
    const res = await this.sessionRequest(`/cloister/v1/train/${job}/checkpoint`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        prev: prev && { number: prev.number, sha256: prev.sha256 },
        next: { number: next.number, sha256: next.sha256 },
      }),
    });
    await this.check(res, `checkpoint ${next.number} of job ${job}`);
  }

  /**
   * Appends the job's training receipt (the DSSE envelope's JSON bytes, sent exactly as given) to the
   * broker's transparency log; answers its log index and the SHA-256 (hex) of its Statement (the
   * DSSE payload). A job has one receipt: the same Statement again answers the first record.
   */
  async appendReceipt(job: string, envelopeJson: Uint8Array): Promise<{ logIndex: number; sha256: string }> {
    const res = await this.sessionRequest(`/cloister/v1/train/${job}/receipt`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      // A copy: the caller's buffer may change while the request (and its retries) are under way.
      body: bs(envelopeJson.slice()),
    });
    await this.check(res, `receipt of job ${job}`);
    const r = (await res.json()) as { logIndex?: unknown; sha256?: unknown };
    if (typeof r.logIndex !== 'number' || typeof r.sha256 !== 'string')
      throw new KbsClientError(
        'the broker answered a receipt without logIndex and sha256',
        res.status,
        undefined,
        'protocol',
      );
    return { logIndex: r.logIndex, sha256: r.sha256 };
  }

  /**
   * A training job's checkpoint MAC key (32 bytes): the broker derives it from its master key and the
   * job id and gives it only to attested sessions of the job (init-data naming the job and its
   * trainer), encrypted to the session's ephemeral key like a resource. The same job gets the same
   * key from every replica, after restarts and in later sessions.
   */
  async trainKey(job: string): Promise<Uint8Array> {
    const { res, session } = await this.sessionExchange(`/cloister/v1/train/${job}/key`, { method: 'GET' });
    await this.check(res, `checkpoint key of job ${job}`);
    let key: Uint8Array;
    try {
      ({ plaintext: key } = await flattenedDecrypt(
        (await res.json()) as FlattenedJWE,
        session.keyPair.privateKey,
      ));
    } catch (e) {
      throw new KbsClientError(
        `the broker answered a checkpoint key that does not decrypt: ${(e as Error).message}`,
        res.status,
        undefined,
        'protocol',
      );
    }
    if (key.length !== 32)
      throw new KbsClientError(
        `the broker answered a checkpoint key of ${key.length} bytes, not 32`,
        res.status,
        undefined,
        'protocol',
      );
    return key;
  }

  /** A request on the attested session; a 401 (expired or evicted session) attests once more. */
  private async sessionRequest(path: string, init: RequestInit): Promise<Response> {
    return (await this.sessionExchange(path, init)).res;
  }

  /** sessionRequest, with the session that answered (whose key decrypts what it sent). */
  private async sessionExchange(
    path: string,
    init: RequestInit,
  ): Promise<{ res: Response; session: Session }> {
    const send = async () => {
      const session = await this.ensureSession();
      const res = await this.request(path, {
        ...init,
        headers: { ...(init.headers as Record<string, string>), cookie: session.cookie },
      });
      return { res, session };
    };
    const first = await send();
    if (first.res.status !== 401) return first;
    this.session = undefined;
    return send();
  }

  private async ensureSession(): Promise<Session> {
    if (this.session) return this.session;
    const keyPair = (await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, [
      'deriveBits',
    ])) as CryptoKeyPair;
    const jwk = await crypto.subtle.exportKey('jwk', keyPair.publicKey);
    const teePubkey: EcPublicJwk = { kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW', x: jwk.x!, y: jwk.y! };

    const auth = await this.request('/kbs/v0/auth', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: KBS_PROTOCOL_VERSION, tee: this.o.attester.tee, 'extra-params': '' }),
    });
    await this.check(auth, 'auth');
    const cookie = (auth.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
    if (!cookie.startsWith('kbs-session-id='))
      throw new KbsClientError('the broker set no kbs-session-id cookie', undefined, undefined, 'protocol');
    const { nonce } = (await auth.json()) as { nonce: string };

    const additional = this.o.attester.additionalEvidence
      ? await this.o.attester.additionalEvidence(await deviceRuntimeDataHash(teePubkey, nonce))
      : '';
    const reportData = await bindingReportData(teePubkey, nonce, additional);
    const primary = await this.o.attester.primaryEvidence(reportData);
    const attest = await this.request('/kbs/v0/attest', {
      method: 'POST',
      headers: { 'content-type': 'application/json', cookie },
      body: JSON.stringify({
        'runtime-data': { nonce, 'tee-pubkey': teePubkey },
        'tee-evidence': { primary_evidence: primary, additional_evidence: additional },
        ...(this.o.initData ? { 'init-data': this.o.initData } : {}),
      }),
    });
    await this.check(attest, 'attestation');
    const { token } = (await attest.json()) as { token: string };
    this.session = { cookie, token, keyPair };
    return this.session;
  }

  /** One request with retries for transient failures only; a 4xx other than 429 is final. */
  private async request(path: string, init: RequestInit): Promise<Response> {
    const attempts = this.o.retries ?? 4;
    let delay = this.o.backoffMs ?? 200;
    let last: unknown;
    for (let i = 0; i < attempts; i++) {
      try {
        const res = await this.fetch(new URL(path, this.o.url), {
          ...init,
          signal: AbortSignal.timeout(this.o.timeoutMs ?? 30_000),
        });
        if (res.status !== 429 && res.status < 500) return res;
        last = new KbsClientError(`broker answered ${res.status}`, res.status);
        if (i === attempts - 1) return res;
      } catch (e) {
        // An untrusted certificate (src/http/client.ts marks it) stays untrusted: say so at once.
        if ((e as { code?: unknown }).code === 'untrusted-certificate')
          throw new KbsClientError(`key broker at ${this.o.url}: ${(e as Error).message}`);
        last = e;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay *= 2;
    }
    throw new KbsClientError(
      `key broker at ${this.o.url} unreachable after ${attempts} attempts: ${(last as Error)?.message ?? last}`,
    );
  }

  private async check(res: Response, what: string): Promise<void> {
    if (res.ok) return;
    throw refusal(res, await problemOf(res), what);
  }
}

/** The problem document of an error answer: its detail and the last segment of its type. */
async function problemOf(res: Response): Promise<{ detail: string; type?: string }> {
  try {
    const p = (await res.json()) as { detail?: string; type?: string };
    const type = p.type?.split('/').pop();
    return { detail: p.detail ?? '', ...(type !== undefined ? { type } : {}) };
  } catch {
    return { detail: res.statusText };
  }
}

function refusal(res: Response, p: { detail: string; type?: string }, what: string): KbsClientError {
  return new KbsClientError(
    `${what} refused by the key broker (${res.status}${p.type ? ` ${p.type}` : ''}): ${p.detail}`,
    res.status,
    p.type,
  );
}

function checkpointRef(v: unknown, what: string): CheckpointRef {
  const c = v as { number?: unknown; sha256?: unknown } | null;
  if (typeof c?.number !== 'number' || typeof c.sha256 !== 'string')
    throw new KbsClientError(`${what} without number and sha256`, undefined, undefined, 'protocol');
  return { number: c.number, sha256: c.sha256 };
}
