/**
 * The file operations the attesters need, as an interface: production passes the real file system
 * (`nodeFs` in ./node.ts); tests pass a fake kernel (configfs creates attribute files on mkdir and
 * computes `outblob` on read, which a plain directory cannot imitate). Failures are errors carrying a
 * POSIX `code` (ENOENT, ENXIO, EACCES, …), as Node's fs raises them.
 */
export interface AgentFs {
  readFile(path: string): Promise<Uint8Array>;
  /** Writes `data` in one write and closes the file (configfs commits a binary attribute on close). */
  writeFile(path: string, data: Uint8Array): Promise<void>;
  /** Creates one directory (not recursive). */
  mkdir(path: string): Promise<void>;
  /** Removes one directory (not recursive: on configfs this drops the report entry). */
  rmdir(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  exists(path: string): Promise<boolean>;
}

/** Runs a program without a shell; rejects with code ENOENT when it is not installed. */
export type CommandRunner = (
  file: string,
  args: string[],
  options?: { timeoutMs?: number },
) => Promise<{ code: number | null; stdout: string; stderr: string }>;

export function joinPath(dir: string, name: string): string {
  return `${dir.replace(/\/+$/, '')}/${name}`;
}

/** The POSIX error code of a file-system error, if it has one. */
export function errnoOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

export function errText(e: unknown): string {
  const code = errnoOf(e);
  const msg = e instanceof Error ? e.message : String(e);
  return code && !msg.includes(code) ? `${code}: ${msg}` : msg;
}

/** A short random suffix so concurrent agents never share a configfs entry. */
export function randomName(prefix: string): string {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return `${prefix}-${Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')}`;
}
