/**
 * Replay protection shared by replicas (Node-only): replicas that share serving keys (serving-keys.ts)
 * could each be sent the same encapsulated request, and a cache per replica would accept it once on
 * every one. This guard records each request's `enc` in Redis with `SET … NX PX window`, so the first
 * replica to see it wins and the others refuse it. It fails closed: without Redis, requests are refused
 * (503) rather than let through unchecked. Records expire on Redis's clock; each replica also keeps a
 * Date floor (replay.ts), so stepping its own clock back does not bring an old request back into its
 * window once it has accepted a later one.
 */
import type * as Redis from '@redis/client';
import type { KeyConfig } from '../ohttp/index.js';
import { DateFloor, OhttpError, type ReplayGuard } from '../ohttp/index.js';
import { sha256, toHex } from '../util/index.js';
import { requireOptional } from '../util/optional/node.js';

// @redis/client is an optional peer dependency, loaded on the first connect: `cloister serve` imports
// this module whether or not --replay-redis is given. The cast keeps createClient's generic signature.
const createClient = ((...args: Parameters<typeof Redis.createClient>) =>
  requireOptional<typeof Redis>('@redis/client', 'sharing replay protection (--replay-redis)').createClient(
    ...args,
  )) as typeof Redis.createClient;

export interface RedisReplayOptions {
  /** redis://[user:password@]host:port[/db] or rediss://… */
  url: string;
  windowMs: number;
  /** The gateway key whose requests are recorded: replicas with the same key share records. */
  key: KeyConfig;
  /** Milliseconds to wait for Redis on connecting; default 5000. */
  connectTimeoutMs?: number;
  /** Milliseconds a check waits for Redis before refusing the request (503); default 2000. */
  commandTimeoutMs?: number;
}

export class RedisReplayGuard implements ReplayGuard {
  private readonly floor: DateFloor;
  private constructor(
    /** SET key NX with the window as expiry; null when the key was there already. */
    private readonly setNew: (key: string) => Promise<string | null>,
    private readonly destroy: () => void,
    private readonly prefix: string,
    private readonly timeoutMs: number,
    windowMs: number,
  ) {
    this.floor = new DateFloor(windowMs);
  }

  /** Connects, or throws an Error that names the URL (without its password). */
  static async connect(o: RedisReplayOptions): Promise<RedisReplayGuard> {
    if (!(o.windowMs > 0)) throw new RangeError('windowMs must be positive');
    const where = redactedUrl(o.url);
    let started = false;
    const client = createClient({
      url: o.url,
      // Commands fail at once while disconnected instead of waiting in a queue: a gateway must answer.
      disableOfflineQueue: true,
      socket: {
        connectTimeout: o.connectTimeoutMs ?? 5000,
        // The first connection is tried once (a wrong URL is a startup error); later ones are retried.
        reconnectStrategy: (retries: number, cause: Error) =>
          started ? Math.min(50 * 2 ** retries, 2000) : cause,
      },
    });
    let last: Error | undefined;
    // Reconnection errors are reported through checks (503); without a listener they would crash.
    client.on('error', (e: Error) => {
      last = e;
    });
    try {
      await client.connect();
      started = true;
    } catch (e) {
      client.destroy();
      throw new Error(`cannot reach Redis at ${where}: ${(e as Error).message || last?.message}`);
    }
    // The server's own socket keeps the process alive while it serves; this one must not keep a
    // process that failed to start from exiting.
    client.unref();
    const keyTag = toHex(await sha256(Uint8Array.of(o.key.keyId, ...o.key.publicKey))).slice(0, 16);
    return new RedisReplayGuard(
      async (key) => {
        const r = await client.set(key, '1', {
          condition: 'NX',
          // Twice the window: a replica whose clock runs behind another's accepts a request's Date
          // later than the first one did; the record must outlive that (up to a window of skew).
          expiration: { type: 'PX', value: 2 * o.windowMs },
        });
        return r === null ? null : String(r);
      },
      () => client.destroy(),
      `cloister:ohttp-replay:${keyTag}:`,
      o.commandTimeoutMs ?? 2000,
      o.windowMs,
    );
  }

  async check(enc: Uint8Array, date: number): Promise<void> {
    this.floor.check(date);
    let set: string | null;
    try {
      set = await withTimeout(this.setNew(this.prefix + toHex(enc)), this.timeoutMs);
    } catch (e) {
      throw new OhttpError(
        'replay-store-unavailable',
        `the replay store (Redis) is unavailable, so the request cannot be checked: ${(e as Error).message}`,
      );
    }
    if (set === null)
      throw new OhttpError('replay', 'this encapsulated request was already received (replay)');
    this.floor.raise(date);
  }

  close(): void {
    this.destroy();
  }
}

/** A Redis that accepts connections but never answers must not hold requests forever. */
function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function redactedUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(an unparsable URL)';
  }
}
