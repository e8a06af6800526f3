/**
 * A local API on a Unix socket, mode 0600 (Node-only): the agent's (src/tee/api.ts) and the training
 * API's (src/train/api.ts). The folder is checked first, a stale socket is removed but a live one is
 * never taken over, and the socket is created 0600 from the start, so no other user can connect in
 * between. Each caller names the socket in its errors and raises them as its own (`refuse`).
 */
import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import type { FastifyInstance } from 'fastify';

export type SocketSetupCode = 'socket-path' | 'socket-in-use';

export interface UnixSocketOptions {
  /** The socket in messages, e.g. "--socket /run/cloister/agent.sock". */
  label: string;
  /** What else the user may choose, for messages a choice of path would fix, e.g. "another --socket". */
  other?: string;
  /** The caller's error for a refusal. */
  refuse: (code: SocketSetupCode, message: string) => Error;
}

/**
 * The socket's folder must exist and be a folder: otherwise listen() reports EACCES (libuv's bind on a
 * path under a missing folder), which sends the operator looking for a permission problem.
 */
async function checkSocketFolder(path: string, o: UnixSocketOptions): Promise<void> {
  const dir = dirname(path);
  const st = await stat(dir).catch((e: NodeJS.ErrnoException) => e);
  if (st instanceof Error) {
    const what = st.code === 'ENOENT' ? 'does not exist' : `cannot be read (${st.code ?? st.message})`;
    const fix =
      st.code === 'ENOENT' ? `; create it (mkdir -p ${dir})${o.other ? ` or choose ${o.other}` : ''}` : '';
    throw o.refuse('socket-path', `${dir}: the folder for ${o.label} ${what}${fix}`);
  }
  if (!st.isDirectory())
    throw o.refuse('socket-path', `${dir}: not a folder, so ${o.label} cannot be made there`);
}

/** Refuses to take over a socket another process is listening on; removes a stale one. */
async function clearStaleSocket(path: string, o: UnixSocketOptions): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket())
    throw o.refuse(
      'socket-path',
      `${path} exists and is not a socket${o.other ? `; choose ${o.other}` : ''}`,
    );
  const live = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw o.refuse('socket-in-use', `another process is listening on ${path}`);
  await unlink(path);
}

/** Listens with `app` on the Unix socket `path`, mode 0600; the returned close() also removes it. */
export async function listenOnUnixSocket(
  app: FastifyInstance,
  path: string,
  o: UnixSocketOptions,
): Promise<{ close(): Promise<void> }> {
  await checkSocketFolder(path, o);
  await clearStaleSocket(path, o);
  // Created 0600 from the start (umask), so there is no window in which others could connect.
  const oldMask = process.umask(0o177);
  try {
    await app.listen({ path });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM')
      throw o.refuse(
        'socket-path',
        `${dirname(path)}: no permission to create ${o.label}; run as a user who may write there${o.other ? ` or choose ${o.other}` : ''}`,
      );
    throw e;
  } finally {
    process.umask(oldMask);
  }
  await chmod(path, 0o600);
  return {
    async close() {
      const closing = app.close();
      app.server.closeAllConnections();
      await closing;
      await unlink(path).catch(() => {});
    },
  };
}
