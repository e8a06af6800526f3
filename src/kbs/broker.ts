/**
 * The key broker's protocol logic, independent of HTTP: sessions, attestation, release decisions and the
 * audit trail. server.ts maps it onto routes; tests drive it directly as well as over HTTP.
 */

import {
  type Appraisal,
  AttestationError,
  appraiseComposite,
  type CollateralSource,
  certTableCollateral,
  chainSources,
  type EarResult,
  issueEar,
  type TeeKind,
  verifyEar,
} from '../attest/index.js';
import type { VerifierRegistry } from '../attest/types.js';
import { toBase64Url } from '../util/index.js';
import {
  bindingReportData,
  deviceEvidence,
  deviceRuntimeDataHash,
  KBS_PROTOCOL_VERSION,
  type KbsAttestation,
  parseAttestation,
  parseRequest,
  parseResourcePath,
  parseTeePubkey,
  primaryEvidenceBytes,
  type TeePubkey,
} from '../wire/index.js';
import { decideRelease, type ReleaseDecision } from './decide.js';
import { KbsError } from './errors.js';
import { bindInitData, INIT_DATA_CLAIM, type ReceivedInitData, receiveInitData } from './init-data.js';
import { checkUsableKey, encryptResource } from './jwe.js';
import type { PolicyPool } from './policy-pool.js';
import type { SecretBox } from './secrets.js';
import type { KbsStore, SessionRecord } from './store/types.js';
import { TRAIN_KEY_LABEL, TrainLedger } from './train.js';

export interface BrokerOptions {
  store: KbsStore;
  secrets: SecretBox;
  registry: VerifierRegistry;
  collateral: CollateralSource;
  /** ES256 key pair that signs EAR tokens; replicas must share it to accept each other's tokens. */
  earKey: CryptoKeyPair;
  /** Key id put in every EAR's header: the published key's (app.ts publishedEarKey), so verifiers holding several keys pick one. */
  earKeyId?: string;
  /** Allows the insecure `sample` TEE. Announced at start and on every log line. */
  devMode: boolean;
  sessionTtlSeconds: number;
  tokenTtlSeconds: number;
  /**
   * Accepts an attestation token as `Authorization: Bearer` on resource requests (Trustee does, for
   * guest-components' token client). Off by default: the token an inference server publishes at
   * /v1/attestation is that same token, so with this on anyone who read it can make the broker log
   * releases the TEE never asked for (ciphertext only goes back, but the audit trail is polluted).
   */
  bearerTokens?: boolean;
  /** Per-kind replacement trust anchors (test authorities, private labs); empty in production. */
  trustAnchors?: Partial<Record<TeeKind, Uint8Array[]>>;
  now?: () => Date;
  onEvent?: (e: BrokerEvent) => void;
  /** Evaluates policies too costly for the event loop (decide.ts); default: a pool shared by the process. */
  policyPool?: PolicyPool;
}

/** Operational events for logs and metrics (never secrets). */
export type BrokerEvent =
  | { type: 'auth'; tee: string }
  | { type: 'attest'; tee: string; ok: boolean; status?: string; reason?: string; ms: number }
  | { type: 'release'; path: string; allowed: boolean; reasons: string[] }
  | { type: 'checkpoint-refused'; job: string; reason: string }
  | { type: 'receipt-refused'; job: string; reason: string };

export interface Credentials {
  sessionId?: string;
  bearer?: string;
}

export class Broker {
  private readonly now: () => Date;
  readonly teeKinds: readonly string[];
  /** Confidential training: checkpoint compare-and-set and receipts (train.ts). */
  readonly train: TrainLedger;

  constructor(private readonly o: BrokerOptions) {
    this.now = o.now ?? (() => new Date());
    this.teeKinds = o.registry.kinds().filter((k) => k !== 'nvidia' && (k !== 'sample' || o.devMode));
    this.train = new TrainLedger({
      store: o.store,
      // The session cookie only, never a bearer token: a token published at /v1/attestation would
      // otherwise let anyone who read it move a job's checkpoint or record receipts in its name.
      attested: (id) => this.attestedSession(id),
      onRefused: (job, reason) => o.onEvent?.({ type: 'checkpoint-refused', job, reason }),
      verifyReceipt: async (envelope, job, kind) => {
        const { verifyTrainingReceipt } = await import('../tee/training-receipt.js');
        try {
          const v = await verifyTrainingReceipt(envelope, {
            registry: o.registry,
            at: this.now(),
            collateral: o.collateral,
            ...(o.trustAnchors?.[kind as TeeKind] ? { trustAnchors: o.trustAnchors[kind as TeeKind] } : {}),
            manifestSha256: job,
          });
          return v.appraisal;
        } catch (e) {
          throw new KbsError('bad-receipt', `the receipt does not verify: ${(e as Error).message}`);
        }
      },
      releasable: (ear, uri, job) => this.releasableForReceipt(ear, uri, job),
      checkpointKey: (launch) => o.secrets.derive(TRAIN_KEY_LABEL, launch),
    });
  }

  /**
   * Whether a recipient of a training job would be released to the session acting for the job:
   * the decision of GET /kbs/v0/resource, with no receipts in the policy input (a receipt must not
   * vouch for the TEE recording the next one). A refusal is logged in the owner's log as a denial,
   * like a refused release, and answered in one form whether the resource exists or not.
   */
  private async releasableForReceipt(ear: EarResult, uri: string, job: string): Promise<string | undefined> {
    const refusal = `the job seals to ${uri}, but that key would not be released to this TEE (denied by policy): only a TEE its owner's policy gives the key to may act for a job sealing to it (its checkpoint key, counter and receipt)`;
    const path = uri.startsWith('kbs:///') ? uri.slice('kbs:///'.length) : uri;
    let parsed: { repository: string; type: string; tag: string } | undefined;
    try {
      parsed = path !== uri ? parseResourcePath(path) : undefined;
    } catch {
      parsed = undefined; // not a resource path: no resource of this broker
    }
    const rec = parsed ? await this.o.store.getResource(path) : undefined;
    const receipt = { job };
    if (!parsed || !rec) {
      // As resource() logs a request for an unknown resource.
      await this.o.store.appendLog({
        kind: 'denial',
        tenant: '',
        actor: 'tee',
        subject: path,
        details: { reasons: ['unknown resource'], via: 'session', receipt },
      });
      this.o.onEvent?.({ type: 'receipt-refused', job, reason: `${uri}: unknown resource` });
      return refusal;
    }
    const decision = await decideRelease({
      store: this.o.store,
      ear,
      resource: { path, ...parsed, tenant: rec.tenant },
      devMode: this.o.devMode,
      now: this.now(),
      withoutReceipts: true,
      ...(this.o.policyPool ? { policyPool: this.o.policyPool } : {}),
    });
    if (decision.allow) return undefined;
    await this.o.store.appendLog({
      kind: 'denial',
      tenant: rec.tenant,
      actor: 'tee',
      subject: path,
      details: {
        allowed: false,
        reasons: decision.reasons,
        policy: decision.policyScope,
        submods: summary(ear),
        version: rec.version,
        via: 'session',
        // What was asked: not the key itself but to record a receipt naming it.
        receipt,
      },
    });
    this.o.onEvent?.({
      type: 'receipt-refused',
      job,
      reason: `${uri} would not be released to this TEE: ${decision.reasons.join('; ')}`,
    });
    return refusal;
  }

  /** Request → Challenge, with a new session. */
  async auth(
    body: unknown,
  ): Promise<{ challenge: { nonce: string; 'extra-params': string }; session: SessionRecord }> {
    const req = parseRequest(body);
    if (!this.teeKinds.includes(req.tee)) throw this.unverifiableTee(req.tee);
    const nonce = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
    const session: SessionRecord = {
      id: toBase64Url(crypto.getRandomValues(new Uint8Array(24))),
      tee: req.tee,
      nonce,
      status: 'challenged',
      expiresAt: new Date(this.now().getTime() + this.o.sessionTtlSeconds * 1000).toISOString(),
    };
    await this.o.store.createSession(session);
    this.o.onEvent?.({ type: 'auth', tee: req.tee });
    return { challenge: { nonce, 'extra-params': '' }, session };
  }

  /** Why a TEE name that kbs_types knows gets no challenge here, in words an operator can act on. */
  private unverifiableTee(tee: string): KbsError {
    const verified = `this broker verifies ${this.teeKinds.join(', ')}`;
    const why =
      tee === 'sample'
        ? 'the sample TEE is insecure (software only) and accepted only in dev mode'
        : tee === 'nvidia' || tee === 'sampledevice' || tee === 'nvidia-dpu'
          ? `"${tee}" is a device, not a primary TEE; GPU evidence goes in additional_evidence (nvidia only)`
          : `Cloister has no verifier for the "${tee}" TEE`;
    return new KbsError('unsupported-tee', `${why}; ${verified}`);
  }

  private async liveSession(id: string | undefined): Promise<SessionRecord> {
    if (!id) throw new KbsError('no-session', `no ${'kbs-session-id'} cookie: start with POST /kbs/v0/auth`);
    const s = await this.o.store.getSession(id);
    if (!s) throw new KbsError('unknown-session', 'unknown session: start again with POST /kbs/v0/auth');
    if (new Date(s.expiresAt) <= this.now()) {
      throw new KbsError('session-expired', 'the session has expired: start again with POST /kbs/v0/auth');
    }
    return s;
  }

  /**
   * Attestation → EAR token. The nonce is single use: a session's evidence is judged once. Asked again,
   * an attested session gets its token back without new evidence being looked at (as Trustee does,
   * so a guest that retries after a lost response is not locked out) — but only for the same nonce and
   * TEE key, so the retry is the guest's own; a refused session stays refused.
   */
  async attest(sessionId: string | undefined, body: unknown): Promise<{ token: string }> {
    const started = performance.now();
    const session = await this.liveSession(sessionId);
    const att = parseAttestation(body);
    if (session.status !== 'challenged') {
      const sameRequest =
        att['runtime-data'].nonce === session.nonce &&
        JSON.stringify(att['runtime-data']['tee-pubkey']) === session.teePubkey;
      if (session.token && sameRequest) return { token: session.token };
      throw new KbsError(
        'nonce-used',
        'this session has already attested and was refused; its nonce cannot be used again',
      );
    }
    const init = att['init-data'] ? await receiveInitData(att['init-data']) : undefined;
    await checkUsableKey(att['runtime-data']['tee-pubkey']);
    if (att['runtime-data'].nonce !== session.nonce) {
      throw new KbsError('nonce-mismatch', 'runtime-data.nonce is not the nonce of this session');
    }
    let token: string;
    try {
      token = await this.appraise(session, att, init);
    } catch (e) {
      // A refused attestation uses the nonce up as well: evidence is judged once per challenge.
      await this.o.store.markAttested(session.id, '', '');
      const reason =
        e instanceof AttestationError ? `${e.stage}/${e.code}: ${e.message}` : (e as Error).message;
      this.o.onEvent?.({
        type: 'attest',
        tee: session.tee,
        ok: false,
        reason,
        ms: performance.now() - started,
      });
      if (e instanceof AttestationError) {
        throw new KbsError(
          e.code === 'report-data-mismatch' ? 'attestation-report-data-mismatch' : 'attestation-refused',
          `evidence refused: ${e.message}`,
          { type: `attestation-${e.code}` },
        );
      }
      throw e;
    }
    const won = await this.o.store.markAttested(
      session.id,
      token,
      JSON.stringify(att['runtime-data']['tee-pubkey']),
    );
    if (!won)
      throw new KbsError('nonce-used', 'this session has already attested; its nonce cannot be used again');
    this.o.onEvent?.({ type: 'attest', tee: session.tee, ok: true, ms: performance.now() - started });
    return { token };
  }

  private async appraise(
    session: SessionRecord,
    att: KbsAttestation,
    received?: ReceivedInitData,
  ): Promise<string> {
    const pubkey = att['runtime-data']['tee-pubkey'];
    const additional = att['tee-evidence'].additional_evidence;
    const expected = await bindingReportData(pubkey, session.nonce, additional);
    const { evidence, extra, certTable } = primaryEvidenceBytes(
      session.tee,
      att['tee-evidence'].primary_evidence,
    );
    const gpus = deviceEvidence(additional);
    const collateral = chainSources(inlineCollateral(extra), this.o.collateral);
    const kind = session.tee as TeeKind;
    const anchors = this.o.trustAnchors ?? {};
    const result = await appraiseComposite(
      { cpu: { kind, evidence }, gpus: gpus.map((g) => ({ kind: g.kind, evidence: g.evidence })) },
      {
        at: this.now(),
        // Certificates the TEE sent with its evidence (an SNP VCEK, a CoCo guest's certificate
        // table) come first; they are checked against the vendor roots like any other collateral.
        collateral: certTable ? certTableCollateral(certTable, collateral) : collateral,
        expectedReportData: expected,
        ...(anchors[kind] ? { trustAnchors: anchors[kind] } : {}),
      },
      this.o.registry,
      {
        // The GPU nonce base is a digest of its own; without GPUs nothing uses it.
        ...(gpus.length > 0 ? { gpuNonceBase: await deviceRuntimeDataHash(pubkey, session.nonce) } : {}),
        ...(anchors.nvidia ? { gpuTrustAnchors: anchors.nvidia } : {}),
        ...(gpus[0]?.nonce === 'coco' ? { gpuNonce: 'prefix' as const } : {}),
      },
    );
    const init = received ? bindInitData(received, result.submods.cpu0!) : undefined;
    return issueEar(result.submods, {
      signingKey: this.o.earKey.privateKey,
      ...(this.o.earKeyId ? { kid: this.o.earKeyId } : {}),
      build: `cloister-kbs ${KBS_PROTOCOL_VERSION}`,
      // The challenge exactly as the TEE received it, so a relying party compares strings.
      nonce: session.nonce,
      issuedAt: this.now(),
      lifetimeSeconds: this.o.tokenTtlSeconds,
      extraClaims: {
        'cloister.tee-pubkey': pubkey,
        ...(init ? { [INIT_DATA_CLAIM]: init } : {}),
      },
    });
  }

  /** The attestation a resource request stands on: the session's token, or a bearer token. */
  private async credentials(
    c: Credentials,
  ): Promise<{ ear: EarResult; teePubkey: TeePubkey; via: 'session' | 'bearer' }> {
    // With bearer tokens off, a request that also has a session cookie is judged by its session.
    if (c.bearer && (this.o.bearerTokens || !c.sessionId)) {
      if (!this.o.bearerTokens) {
        throw new KbsError(
          'bearer-disabled',
          'this broker does not accept attestation tokens as bearer credentials (bearerTokens is off): use the kbs-session-id cookie of an attested session',
        );
      }
      let ear: EarResult;
      try {
        ear = await verifyEar(c.bearer, this.o.earKey.publicKey, { at: this.now() });
      } catch (e) {
        throw new KbsError('bad-token', `bearer token refused: ${(e as Error).message}`);
      }
      let key: TeePubkey;
      try {
        key = parseTeePubkey(ear.teePubkey);
      } catch {
        throw new KbsError('bad-token', 'bearer token carries no usable TEE key (cloister.tee-pubkey)');
      }
      return { ear, teePubkey: key, via: 'bearer' };
    }
    const { ear, teePubkey } = await this.attestedSession(c.sessionId);
    return { ear, teePubkey, via: 'session' };
  }

  /** A live session that has attested, with its (still valid) attestation result and TEE key. */
  private async attestedSession(id: string | undefined): Promise<{ ear: EarResult; teePubkey: TeePubkey }> {
    const s = await this.liveSession(id);
    if (s.status !== 'attested' || !s.token || !s.teePubkey) {
      throw new KbsError('not-attested', 'this session has not attested: POST /kbs/v0/attest first');
    }
    let ear: EarResult;
    try {
      ear = await verifyEar(s.token, this.o.earKey.publicKey, { at: this.now() });
    } catch (e) {
      // The session outlived its token: a 401 makes the client attest again.
      throw new KbsError(
        'token-expired',
        `the session's attestation token is no longer valid: ${(e as Error).message}`,
      );
    }
    return { ear, teePubkey: parseTeePubkey(JSON.parse(s.teePubkey)) };
  }

  /**
   * GET resource: the decision is logged with its reasons (for the owner's audit), while the requester
   * learns only "denied by policy" — also for a resource that does not exist, so that a TEE cannot
   * probe which resource names exist.
   */
  async resource(c: Credentials, path: string): Promise<{ jwe: unknown; decision: ReleaseDecision }> {
    const { repository, type, tag } = parseResourcePath(path);
    const { ear, teePubkey, via } = await this.credentials(c);
    const rec = await this.o.store.getResource(path);
    if (!rec) {
      // The same lookups as for a resource that exists, so the answer does not come back sooner.
      await decideRelease({
        store: this.o.store,
        ear,
        resource: { path, repository, type, tag, tenant: '' },
        devMode: this.o.devMode,
        now: this.now(),
        ...(this.o.policyPool ? { policyPool: this.o.policyPool } : {}),
      });
      this.o.onEvent?.({ type: 'release', path, allowed: false, reasons: ['unknown resource'] });
      await this.o.store.appendLog({
        kind: 'denial',
        tenant: '',
        actor: 'tee',
        subject: path,
        details: { reasons: ['unknown resource'], via },
      });
      throw deniedByPolicy();
    }
    const decision = await decideRelease({
      store: this.o.store,
      ear,
      resource: { path, repository, type, tag, tenant: rec.tenant },
      devMode: this.o.devMode,
      now: this.now(),
      ...(this.o.policyPool ? { policyPool: this.o.policyPool } : {}),
    });
    const details = {
      allowed: decision.allow,
      reasons: decision.reasons,
      policy: decision.policyScope,
      submods: summary(ear),
      version: rec.version,
      // Which credential asked: an auditor can tell a TEE's own session from a presented token.
      via,
    };
    this.o.onEvent?.({ type: 'release', path, allowed: decision.allow, reasons: decision.reasons });
    if (!decision.allow) {
      await this.o.store.appendLog({
        kind: 'denial',
        tenant: rec.tenant,
        actor: 'tee',
        subject: path,
        details,
      });
      throw deniedByPolicy();
    }
    const value = await this.o.secrets.open(path, rec.secret);
    const jwe = await encryptResource(value, teePubkey);
    value.fill(0);
    await this.o.store.appendLog({
      kind: 'release',
      tenant: rec.tenant,
      actor: 'tee',
      subject: path,
      details,
    });
    return { jwe, decision };
  }
}

/** The one refusal a TEE sees for a resource, whatever the reason (the log has it). */
const deniedByPolicy = () => new KbsError('denied', 'denied by policy');

/** Serves files that arrived inside the evidence under their collateral file names. */
function inlineCollateral(files: Record<string, Uint8Array>): CollateralSource {
  return {
    async get(req) {
      const name = req.files.find((f) => files[f] !== undefined);
      return name ? { body: files[name]!, headers: {} } : undefined;
    },
  };
}

function summary(ear: EarResult): Record<string, { status: string; kind?: string }> {
  return Object.fromEntries(
    Object.entries(ear.submods).map(([n, s]) => [
      n,
      { status: s.status, ...(s.kind ? { kind: s.kind } : {}) },
    ]),
  );
}

export type { Appraisal };
