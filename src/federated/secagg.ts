/**
 * Secure aggregation with pairwise masks and dropout recovery: the double-masking protocol of
 * Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning"), over a
 * chosen neighbour graph as Flower's SecAgg+ does, or over all clients. The coordinator learns only
 * Σ x_u mod 2^32 of the clients that survived to the end, even if its TEE were broken.
 *
 * Web-standard on purpose (Web Crypto, Uint8Array/Uint32Array): the same code runs in a client's TEE, in
 * the coordinator and in a browser.
 *
 * Rounds, as the caller drives them (messages are plain objects; a real deployment seals each share to
 * its recipient, which is the transport's business, not this module's):
 *   1. every client `createSecAggClient` → publishes `publicKey`;
 *   2. every client `shareKeys(publicKeys)` → `SecAggShare`s routed to their `to`; `receiveShares`;
 *   3. every client `maskInput(x)` → masked vector to the coordinator; some may drop after this;
 *   4. the coordinator picks survivors U2 (those whose masked vector arrived), asks survivors
 *      `revealShares({ survivors, dropped })`, then `unmaskSum(...)` → Σ_{u∈U2} x_u mod 2^32.
 */
import { FederatedError } from './errors.js';

export type SecAggCode =
  | 'secagg-config'
  | 'secagg-id'
  | 'secagg-key'
  | 'secagg-length'
  | 'secagg-missing-share'
  | 'secagg-below-threshold'
  | 'secagg-both-shares'
  | 'secagg-bad-share'
  | 'secagg-range';

/** Ids are the Shamir x-coordinates over GF(256): non-zero and below 256. */
const MAX_ID = 255;

export interface SecAggConfig {
  /** Bound into every pairwise seed, so masks of one round never cancel or repeat in another. */
  roundId: string;
  /** The clients that take part (ids 1..255, distinct). */
  clientIds: readonly number[];
  /** Shares needed to reconstruct a secret; also the fewest survivors the round accepts. */
  threshold: number;
  vectorLength: number;
  /**
   * SecAgg+: each client's neighbours (symmetric). Omitted: every client is every other's neighbour
   * (the original protocol). Shares go to the neighbours and to the client itself.
   */
  neighbours?: ReadonlyMap<number, readonly number[]>;
}

/** One client's shares of its self-mask seed b_u and of its mask private key, for one holder. */
export interface SecAggShare {
  from: number;
  to: number;
  selfMaskShare: Uint8Array;
  maskKeyShare: Uint8Array;
}

export interface UnmaskRequest {
  survivors: readonly number[];
  dropped: readonly number[];
}

/** A survivor's answer: the shares it holds, keyed by the client they belong to. */
export interface UnmaskResponse {
  from: number;
  selfMaskShares: ReadonlyMap<number, Uint8Array>;
  maskKeyShares: ReadonlyMap<number, Uint8Array>;
}

function fail(code: SecAggCode, message: string): never {
  throw new FederatedError(code, message);
}

/** Checks the config once and resolves the neighbour graph; every entry point goes through it. */
function neighbourGraph(config: SecAggConfig): Map<number, number[]> {
  const { clientIds, threshold, vectorLength } = config;
  const ids = new Set(clientIds);
  if (ids.size !== clientIds.length) fail('secagg-config', 'clientIds: duplicate id');
  for (const id of clientIds) {
    if (!Number.isInteger(id) || id < 1 || id > MAX_ID)
      fail('secagg-id', `clientIds: ${id} is not an integer in 1..255`);
  }
  if (!Number.isInteger(vectorLength) || vectorLength < 1)
    fail('secagg-config', 'vectorLength: must be a positive integer');
  // t ≥ 2: with t = 1 any single holder (the coordinator colluding with one client) learns a secret.
  if (!Number.isInteger(threshold) || threshold < 2)
    fail('secagg-config', 'threshold: must be an integer ≥ 2');
  const graph = new Map<number, number[]>();
  for (const id of clientIds) {
    const given = config.neighbours ? config.neighbours.get(id) : clientIds.filter((v) => v !== id);
    if (!given) fail('secagg-config', `neighbours: no entry for client ${id}`);
    for (const v of given) {
      if (v === id || !ids.has(v))
        fail('secagg-config', `neighbours: client ${id} lists ${v}, not another participant`);
      // Asymmetry would leave a mask in one vector with no opposite mask to cancel it.
      if (config.neighbours && !config.neighbours.get(v)?.includes(id)) {
        fail('secagg-config', `neighbours: ${id} lists ${v} but ${v} does not list ${id}`);
      }
    }
    // The holders of u's shares are its neighbours and itself; fewer than t could never reconstruct.
    if (given.length + 1 < threshold)
      fail('secagg-config', `threshold: client ${id} has only ${given.length + 1} share holders`);
    graph.set(
      id,
      [...given].sort((a, b) => a - b),
    );
  }
  return graph;
}

// ---------------------------------------------------------------------------------------------------
// Shamir secret sharing over GF(2^8), byte-wise (the AES field, x^8+x^4+x^3+x+1): each byte of the
// secret is the constant term of its own random polynomial of degree t−1; a share is the evaluations
// at the holder's id. Simple, exact, and standard (as in SLIP-39 / HashiCorp Vault).
// ---------------------------------------------------------------------------------------------------

const EXP = new Uint8Array(510);
const LOG = new Uint8Array(256);
{
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    // Multiply by the generator 3: x·2 (reduced by 0x11b) xor x.
    x ^= (x << 1) ^ (x & 0x80 ? 0x11b : 0);
  }
  // Doubling the table spares a modulo in gfMul.
  for (let i = 255; i < 510; i++) EXP[i] = EXP[i - 255] as number;
}

function gfMul(a: number, b: number): number {
  if (a === 0 || b === 0) return 0;
  return EXP[(LOG[a] as number) + (LOG[b] as number)] as number;
}

function gfDiv(a: number, b: number): number {
  if (a === 0) return 0;
  return EXP[(LOG[a] as number) + 255 - (LOG[b] as number)] as number;
}

/** Splits `secret` into one share per x in `xs`; any `t` of them reconstruct it, fewer reveal nothing. */
export function shamirSplit(secret: Uint8Array, xs: readonly number[], t: number): Map<number, Uint8Array> {
  const coeffs = crypto.getRandomValues(new Uint8Array(secret.length * (t - 1)));
  const out = new Map<number, Uint8Array>();
  for (const x of xs) {
    const y = new Uint8Array(secret.length);
    for (let i = 0; i < secret.length; i++) {
      // Horner, from the highest coefficient down to the secret byte.
      let acc = 0;
      for (let k = t - 2; k >= 0; k--) acc = gfMul(acc, x) ^ (coeffs[i * (t - 1) + k] as number);
      y[i] = gfMul(acc, x) ^ (secret[i] as number);
    }
    out.set(x, y);
  }
  return out;
}

/** Lagrange interpolation at 0 of the given shares (x → y); the caller checks there are at least t. */
export function shamirCombine(shares: ReadonlyMap<number, Uint8Array>): Uint8Array {
  const xs = [...shares.keys()];
  const len = shares.get(xs[0] as number)?.length ?? 0;
  const out = new Uint8Array(len);
  for (const xi of xs) {
    const y = shares.get(xi) as Uint8Array;
    if (y.length !== len) fail('secagg-length', `share of holder ${xi}: ${y.length} bytes, expected ${len}`);
    // Basis polynomial at 0: Π x_j / (x_j − x_i), subtraction being xor in GF(2^8).
    let basis = 1;
    for (const xj of xs) if (xj !== xi) basis = gfMul(basis, gfDiv(xj, xj ^ xi));
    for (let b = 0; b < len; b++) out[b] = (out[b] as number) ^ gfMul(y[b] as number, basis);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Keys, seeds and the PRG.
// ---------------------------------------------------------------------------------------------------

const X25519 = { name: 'X25519' } as const;
/** PKCS#8 header of an X25519 private key (RFC 8410); the last 32 bytes are the raw secret. */
const PKCS8_X25519 = Uint8Array.of(
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x04,
  0x22,
  0x04,
  0x20,
);
const encoder = new TextEncoder();

async function importPrivate(raw: Uint8Array): Promise<CryptoKey> {
  const pkcs8 = new Uint8Array(PKCS8_X25519.length + raw.length);
  pkcs8.set(PKCS8_X25519);
  pkcs8.set(raw, PKCS8_X25519.length);
  // Extractable so that a reconstructed key can be checked against the public key it claims to match.
  return crypto.subtle.importKey('pkcs8', pkcs8, X25519, true, ['deriveBits']);
}

async function importPublic(raw: Uint8Array, owner: number): Promise<CryptoKey> {
  if (raw.length !== 32) fail('secagg-key', `publicKey of client ${owner}: ${raw.length} bytes, expected 32`);
  try {
    // Copied: Web Crypto's types want an ArrayBuffer-backed view, not a possibly shared one.
    return await crypto.subtle.importKey('raw', new Uint8Array(raw), X25519, true, []);
  } catch (cause) {
    throw new FederatedError('secagg-key', `publicKey of client ${owner}: not an X25519 key`, { cause });
  }
}

/**
 * s_uv = HKDF-SHA256(X25519(u, v), info = label ‖ roundId ‖ min ‖ max): both ends derive the same seed,
 * and a fresh round id gives fresh masks even with the same keys.
 */
async function pairSeed(
  priv: CryptoKey,
  peerPublic: CryptoKey,
  roundId: string,
  u: number,
  v: number,
): Promise<Uint8Array> {
  const shared = await crypto.subtle.deriveBits({ name: 'X25519', public: peerPublic }, priv, 256);
  const ikm = await crypto.subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  const round = encoder.encode(roundId);
  const info = new Uint8Array(17 + 4 + round.length + 4);
  info.set(encoder.encode('cloister secagg1'), 0);
  const view = new DataView(info.buffer);
  view.setUint32(17, round.length);
  info.set(round, 21);
  view.setUint16(21 + round.length, Math.min(u, v));
  view.setUint16(23 + round.length, Math.max(u, v));
  const bits = await crypto.subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info },
    ikm,
    256,
  );
  return new Uint8Array(bits);
}

/** The PRG: the AES-256-CTR keystream under `seed` from counter 0, read as little-endian uint32. */
async function prg(seed: Uint8Array, n: number): Promise<Uint32Array> {
  const key = await crypto.subtle.importKey('raw', new Uint8Array(seed), 'AES-CTR', false, ['encrypt']);
  const stream = await crypto.subtle.encrypt(
    { name: 'AES-CTR', counter: new Uint8Array(16), length: 64 },
    key,
    new Uint8Array(4 * n),
  );
  const view = new DataView(stream);
  const out = new Uint32Array(n);
  // DataView, not a Uint32Array over the buffer, so the masks agree across machines of any endianness.
  for (let i = 0; i < n; i++) out[i] = view.getUint32(4 * i, true);
  return out;
}

function addInto(acc: Uint32Array, v: Uint32Array, sign: 1 | -1): void {
  for (let i = 0; i < acc.length; i++)
    acc[i] = sign === 1 ? (acc[i] as number) + (v[i] as number) : (acc[i] as number) - (v[i] as number);
}

// ---------------------------------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------------------------------

export interface SecAggClient {
  readonly id: number;
  /** Raw X25519 public key (32 bytes) for the pairwise seeds. */
  readonly publicKey: Uint8Array;
  shareKeys(publicKeys: ReadonlyMap<number, Uint8Array>): Promise<SecAggShare[]>;
  receiveShares(shares: readonly SecAggShare[]): void;
  maskInput(x: Uint32Array): Promise<Uint32Array>;
  revealShares(request: UnmaskRequest): UnmaskResponse;
}

export async function createSecAggClient(config: SecAggConfig, id: number): Promise<SecAggClient> {
  const graph = neighbourGraph(config);
  const neighbours = graph.get(id) ?? fail('secagg-id', `id: ${id} is not in clientIds`);
  const pair = (await crypto.subtle.generateKey(X25519, true, ['deriveBits'])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  const maskSecret = new Uint8Array(await crypto.subtle.exportKey('pkcs8', pair.privateKey)).slice(
    PKCS8_X25519.length,
  );
  const selfMaskSeed = crypto.getRandomValues(new Uint8Array(32));
  const holders = [...neighbours, id].sort((a, b) => a - b);
  let peerKeys: Map<number, CryptoKey> | undefined;
  /** Shares this client holds: owner → its shares of b_owner and of the owner's mask key. */
  const held = new Map<number, SecAggShare>();
  /** What was already revealed per owner: revealing the other kind later would unmask that owner. */
  const revealed = new Map<number, 'self' | 'key'>();

  async function loadPeerKeys(publicKeys: ReadonlyMap<number, Uint8Array>): Promise<Map<number, CryptoKey>> {
    const keys = new Map<number, CryptoKey>();
    for (const v of neighbours) {
      const raw = publicKeys.get(v) ?? fail('secagg-key', `publicKeys: none for neighbour ${v}`);
      keys.set(v, await importPublic(raw, v));
    }
    return keys;
  }

  return {
    id,
    publicKey,
    async shareKeys(publicKeys) {
      peerKeys = await loadPeerKeys(publicKeys);
      const b = shamirSplit(selfMaskSeed, holders, config.threshold);
      const k = shamirSplit(maskSecret, holders, config.threshold);
      return holders.map((to) => ({
        from: id,
        to,
        selfMaskShare: b.get(to) as Uint8Array,
        maskKeyShare: k.get(to) as Uint8Array,
      }));
    },
    receiveShares(shares) {
      for (const s of shares) {
        if (s.to !== id) fail('secagg-id', `share from ${s.from}: addressed to ${s.to}, not ${id}`);
        if (s.from !== id && !neighbours.includes(s.from))
          fail('secagg-id', `share from ${s.from}: not a neighbour of ${id}`);
        if (s.selfMaskShare.length !== 32 || s.maskKeyShare.length !== 32)
          fail('secagg-length', `share from ${s.from}: expected 32-byte shares`);
        held.set(s.from, s);
      }
    },
    async maskInput(x) {
      if (x.length !== config.vectorLength)
        fail('secagg-length', `input: ${x.length} values, expected ${config.vectorLength}`);
      if (!peerKeys) fail('secagg-missing-share', 'maskInput: shareKeys has not run');
      // A neighbour whose shares never arrived could not be recovered if it dropped, so the round must not start.
      for (const v of holders)
        if (!held.has(v)) fail('secagg-missing-share', `maskInput: no share from client ${v}`);
      const y = Uint32Array.from(x);
      addInto(y, await prg(selfMaskSeed, x.length), 1);
      for (const [v, pub] of peerKeys) {
        const seed = await pairSeed(pair.privateKey, pub, config.roundId, id, v);
        addInto(y, await prg(seed, x.length), v > id ? 1 : -1);
      }
      return y;
    },
    revealShares({ survivors, dropped }) {
      const alive = new Set(survivors);
      for (const u of dropped) {
        if (alive.has(u))
          fail('secagg-both-shares', `request: client ${u} is listed both as survivor and as dropped`);
      }
      if (!alive.has(id)) fail('secagg-id', `request: ${id} answers but is not among the survivors`);
      if (alive.size < config.threshold)
        fail('secagg-below-threshold', `request: ${alive.size} survivors, threshold ${config.threshold}`);
      // Check the whole request before revealing anything, so a refused request leaks nothing.
      for (const [list, kind] of [
        [survivors, 'self'],
        [dropped, 'key'],
      ] as const) {
        for (const u of list) {
          const before = revealed.get(u);
          if (before && before !== kind)
            fail(
              'secagg-both-shares',
              `request: client ${u}'s ${before === 'self' ? 'self-mask' : 'mask-key'} share was already revealed`,
            );
        }
      }
      const selfMaskShares = new Map<number, Uint8Array>();
      const maskKeyShares = new Map<number, Uint8Array>();
      for (const u of survivors) {
        const s = held.get(u);
        if (!s) continue;
        revealed.set(u, 'self');
        selfMaskShares.set(u, s.selfMaskShare);
      }
      for (const u of dropped) {
        const s = held.get(u);
        if (!s) continue;
        revealed.set(u, 'key');
        maskKeyShares.set(u, s.maskKeyShare);
      }
      return { from: id, selfMaskShares, maskKeyShares };
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// The coordinator's unmasking.
// ---------------------------------------------------------------------------------------------------

function gather(
  owner: number,
  kind: 'selfMaskShares' | 'maskKeyShares',
  responses: readonly UnmaskResponse[],
  t: number,
): Map<number, Uint8Array> {
  const shares = new Map<number, Uint8Array>();
  for (const r of responses) {
    const s = r[kind].get(owner);
    if (s) shares.set(r.from, s);
  }
  if (shares.size < t) {
    fail(
      'secagg-below-threshold',
      `${kind === 'selfMaskShares' ? 'self-mask' : 'mask-key'} of client ${owner}: ${shares.size} shares, threshold ${t}`,
    );
  }
  return shares;
}

/**
 * Σ_{u∈U2} x_u mod 2^32 from the survivors' masked vectors (U2 = the keys of `masked`): removes each
 * survivor's self mask (b_u rebuilt from shares) and the pairwise masks that dropped clients left in
 * their surviving neighbours' vectors (mask keys rebuilt from shares, checked against `publicKeys`).
 */
export async function unmaskSum(
  config: SecAggConfig,
  publicKeys: ReadonlyMap<number, Uint8Array>,
  masked: ReadonlyMap<number, Uint32Array>,
  responses: readonly UnmaskResponse[],
): Promise<Uint32Array> {
  const graph = neighbourGraph(config);
  const n = config.vectorLength;
  if (masked.size < config.threshold)
    fail('secagg-below-threshold', `masked: ${masked.size} survivors, threshold ${config.threshold}`);
  const sum = new Uint32Array(n);
  for (const [u, y] of masked) {
    if (!graph.has(u)) fail('secagg-id', `masked: ${u} is not in clientIds`);
    if (y.length !== n)
      fail('secagg-length', `masked vector of client ${u}: ${y.length} values, expected ${n}`);
    addInto(sum, y, 1);
  }
  for (const r of responses)
    if (!masked.has(r.from)) fail('secagg-id', `responses: ${r.from} is not a survivor`);

  for (const u of masked.keys()) {
    const seed = shamirCombine(gather(u, 'selfMaskShares', responses, config.threshold));
    addInto(sum, await prg(seed, n), -1);
  }
  for (const [u, neighbours] of graph) {
    if (masked.has(u)) continue;
    const alive = neighbours.filter((v) => masked.has(v));
    if (alive.length === 0) continue; // u's masks appear in no surviving vector: nothing to remove.
    const secret = shamirCombine(gather(u, 'maskKeyShares', responses, config.threshold));
    const priv = await importPrivate(secret);
    // Wrong or forged shares give a different key; its public half then differs from the one u published.
    const claimed = publicKeys.get(u) ?? fail('secagg-key', `publicKeys: none for dropped client ${u}`);
    const jwk = await crypto.subtle.exportKey('jwk', priv);
    const derived = await crypto.subtle.importKey(
      'jwk',
      { kty: 'OKP', crv: 'X25519', x: jwk.x ?? '' },
      X25519,
      true,
      [],
    );
    const derivedRaw = new Uint8Array(await crypto.subtle.exportKey('raw', derived));
    if (!equalBytes(derivedRaw, claimed))
      fail('secagg-bad-share', `mask-key of client ${u}: the shares do not rebuild the published key`);
    for (const v of alive) {
      const pub = await importPublic(
        publicKeys.get(v) ?? fail('secagg-key', `publicKeys: none for client ${v}`),
        v,
      );
      const mask = await prg(await pairSeed(priv, pub, config.roundId, u, v), n);
      // v added +mask when u > v and −mask when u < v; undo exactly that.
      addInto(sum, mask, u > v ? -1 : 1);
    }
  }
  return sum;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}

// ---------------------------------------------------------------------------------------------------
// Quantisation: masks work in Z/2^32, updates are floats.
// ---------------------------------------------------------------------------------------------------

export interface Quantisation {
  /** Values are clipped to [−clip, clip] before scaling; bounds each client's contribution. */
  clip: number;
  /** Integer steps per unit: resolution 1/scale. */
  scale: number;
}

function checkQuantisation({ clip, scale }: Quantisation): void {
  if (!(clip > 0) || !Number.isFinite(clip)) fail('secagg-range', 'clip: must be a positive finite number');
  if (!(scale > 0) || !Number.isFinite(scale))
    fail('secagg-range', 'scale: must be a positive finite number');
}

/** Float → uint32: clip, scale, round to nearest, two's complement (so negatives wrap and sums still add). */
export function quantise(values: ArrayLike<number>, q: Quantisation): Uint32Array {
  checkQuantisation(q);
  if (q.clip * q.scale >= 2 ** 31) fail('secagg-range', 'clip × scale: must stay below 2^31');
  const out = new Uint32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (Number.isNaN(v)) fail('secagg-range', `values[${i}]: NaN`);
    out[i] = Math.round(Math.min(q.clip, Math.max(-q.clip, v)) * q.scale) >>> 0;
  }
  return out;
}

/**
 * The float sum of `count` quantised vectors. Refuses when `count` clients at the clip could exceed the
 * int32 range: the sum would have wrapped and read back as garbage.
 */
export function dequantiseSum(sum: Uint32Array, q: Quantisation, count: number): Float64Array {
  checkQuantisation(q);
  if (!Number.isInteger(count) || count < 1) fail('secagg-range', 'count: must be a positive integer');
  if (count * Math.round(q.clip * q.scale) >= 2 ** 31)
    fail('secagg-range', `count × clip × scale: ${count} clients could overflow 2^31`);
  const out = new Float64Array(sum.length);
  for (let i = 0; i < sum.length; i++) out[i] = ((sum[i] as number) | 0) / q.scale;
  return out;
}
