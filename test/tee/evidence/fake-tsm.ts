/**
 * A fake Linux configfs-tsm for tests, behind the attesters' `AgentFs` interface. It behaves like
 * drivers/virt/coco/guest/report.c: mkdir creates an entry (ENXIO without a provider), `provider` and
 * `generation` are readable, each write to `inblob` / `privlevel` bumps `generation`, reading
 * `outblob` without an inblob is EINVAL, and `outblob` is generated on first read after a write —
 * here by the SEV-SNP test authority, with the inblob as REPORT_DATA — and cached with `auxblob` (the
 * certificate table: VCEK, ASK, ARK) until the next write. rmdir drops the entry.
 *
 * Races and failures are injected: `raceOnRead(n, when)` makes another writer write its inblob into
 * the entry in use just before or just after our `outblob` read, for the next n reads; `failOn(file, errno)` fails the
 * next access to that file.
 */

import { GUID_ARK, GUID_ASK, GUID_VCEK } from '../../../src/attest/snp/certtable.js';
import type { IssuedReport, SnpTestAuthority } from '../../../src/attest/testing/snp.js';
import type { AgentFs } from '../../../src/tee/evidence/fs.js';
import { bs, concatBytes, utf8 } from '../../../src/util/bytes.js';

function fsError(code: string, path: string): Error {
  return Object.assign(new Error(`${code}: fake configfs, ${path}`), { code, path });
}

function guidBytes(guid: string): Uint8Array {
  const hex = guid.replace(/-/g, '');
  return Uint8Array.from({ length: 16 }, (_, i) => Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

/** The GHCB certificate table: {GUID, u32le offset, u32le length}… all-zero entry, then the blobs. */
export function certTable(entries: [string, Uint8Array][]): Uint8Array {
  const headerSize = 24 * (entries.length + 1);
  const headers: Uint8Array[] = [];
  let offset = headerSize;
  for (const [guid, data] of entries) {
    const h = new Uint8Array(24);
    h.set(guidBytes(guid));
    const dv = new DataView(h.buffer);
    dv.setUint32(16, offset, true);
    dv.setUint32(20, data.length, true);
    headers.push(h);
    offset += data.length;
  }
  return concatBytes(...headers, new Uint8Array(24), ...entries.map(([, d]) => d));
}

interface Entry {
  generation: number;
  readGeneration: number;
  inblob?: Uint8Array;
  privlevel: number;
  serviceProvider?: string;
  manifest?: Uint8Array;
  report?: IssuedReport;
  auxblob?: Uint8Array;
}

export interface FakeTsmOptions {
  root: string;
  /** Issues sev_guest outblobs. */
  authority?: SnpTestAuthority;
  /** Issues outblobs for any other provider (e.g. a quote-shaped tdx_guest outblob). */
  outblob?: (inblob: Uint8Array) => Uint8Array;
  /** What `provider` reads; undefined emulates a kernel with no TSM driver loaded (mkdir → ENXIO). */
  provider?: string | undefined;
  /** Whether the report directory exists at all. */
  present?: boolean;
  /** Attach the certificate table as auxblob (the host supplies certificates). */
  withCerts?: boolean;
  privlevelFloor?: number;
}

export class FakeTsm implements AgentFs {
  readonly entries = new Map<string, Entry>();
  /** Every entry ever created, in order. */
  readonly created: string[] = [];
  readonly removed: string[] = [];
  /** Every report the "firmware" issued, for building collateral. */
  readonly issued: IssuedReport[] = [];
  private races = 0;
  private raceWhen: 'before' | 'after' = 'after';
  private failures = new Map<string, string>();

  constructor(private readonly o: FakeTsmOptions) {}

  /**
   * Another writer puts its own inblob into the entry in use, `when` our outblob read happens: before
   * it (we would get their report) or right after it (our auxblob would be theirs).
   */
  raceOnRead(times: number, when: 'before' | 'after' = 'after'): void {
    this.races = times;
    this.raceWhen = when;
  }

  failOn(file: string, errno: string): void {
    this.failures.set(file, errno);
  }

  /** Entries still present (leaks). */
  live(): string[] {
    return [...this.entries.keys()];
  }

  private split(path: string): { entry?: string; file?: string } {
    const root = this.o.root;
    if (path === root) return {};
    if (!path.startsWith(`${root}/`)) throw fsError('ENOENT', path);
    const [entry, file, ...rest] = path.slice(root.length + 1).split('/');
    if (rest.length > 0) throw fsError('ENOENT', path);
    return { entry: entry!, ...(file !== undefined ? { file } : {}) };
  }

  private entryAt(path: string): { e: Entry; file: string } {
    const { entry, file } = this.split(path);
    const e = entry !== undefined ? this.entries.get(entry) : undefined;
    if (!e || file === undefined) throw fsError('ENOENT', path);
    const fail = this.failures.get(file);
    if (fail) {
      this.failures.delete(file);
      throw fsError(fail, path);
    }
    return { e, file };
  }

  async exists(path: string): Promise<boolean> {
    if (this.o.present === false) return false;
    if (path === this.o.root) return true;
    try {
      const { entry, file } = this.split(path);
      const e = this.entries.get(entry!);
      return e !== undefined && (file === undefined || this.files().includes(file));
    } catch {
      return false;
    }
  }

  private files(): string[] {
    const f = ['inblob', 'outblob', 'provider', 'generation'];
    if (this.o.provider === 'sev_guest') {
      f.push('auxblob', 'privlevel', 'privlevel_floor', 'service_provider', 'manifestblob');
    }
    return f;
  }

  async mkdir(path: string): Promise<void> {
    if (this.o.present === false) throw fsError('ENOENT', path);
    const { entry, file } = this.split(path);
    if (entry === undefined || file !== undefined) throw fsError('EPERM', path);
    if (this.entries.has(entry)) throw fsError('EEXIST', path);
    if (this.o.provider === undefined) throw fsError('ENXIO', path);
    this.entries.set(entry, { generation: 0, readGeneration: 0, privlevel: 0 });
    this.created.push(entry);
  }

  async rmdir(path: string): Promise<void> {
    const { entry, file } = this.split(path);
    if (entry === undefined || file !== undefined || !this.entries.delete(entry))
      throw fsError('ENOENT', path);
    this.removed.push(entry);
  }

  async readdir(path: string): Promise<string[]> {
    if (path !== this.o.root || this.o.present === false) throw fsError('ENOENT', path);
    return this.live();
  }

  async writeFile(path: string, data: Uint8Array): Promise<void> {
    const { e, file } = this.entryAt(path);
    if (file === 'inblob') {
      if (data.length > 64) throw fsError('EFBIG', path);
      e.inblob = data.slice();
    } else if (file === 'privlevel' && this.files().includes('privlevel')) {
      const v = Number(utf8.decode(data).trim());
      if (!Number.isInteger(v) || v < (this.o.privlevelFloor ?? 0) || v > 3) throw fsError('EINVAL', path);
      e.privlevel = v;
    } else if (file === 'service_provider' && this.files().includes(file)) {
      e.serviceProvider = utf8.decode(data).trim();
    } else throw fsError(this.files().includes(file) ? 'EACCES' : 'ENOENT', path);
    e.generation++;
  }

  async readFile(path: string): Promise<Uint8Array> {
    const { e, file } = this.entryAt(path);
    switch (file) {
      case 'provider':
        return utf8.encode(`${this.o.provider}\n`);
      case 'generation':
        return utf8.encode(`${e.generation}\n`);
      case 'privlevel_floor':
        if (this.o.provider !== 'sev_guest') break;
        return utf8.encode(`${this.o.privlevelFloor ?? 0}\n`);
      case 'outblob':
      case 'auxblob':
      case 'manifestblob': {
        if (file !== 'outblob' && this.o.provider !== 'sev_guest') break;
        if (!e.inblob) throw fsError('EINVAL', path);
        if (file === 'outblob' && this.races > 0 && this.raceWhen === 'before') {
          this.races--;
          e.inblob = new Uint8Array(64).fill(0xee);
          e.generation++;
        }
        if (!e.report || e.readGeneration !== e.generation) await this.generate(e);
        const out =
          file === 'outblob'
            ? e.report!.report
            : file === 'auxblob'
              ? (e.auxblob ?? new Uint8Array())
              : (e.manifest ?? new Uint8Array());
        if (file === 'outblob' && this.races > 0 && this.raceWhen === 'after') {
          // Another process writes its own inblob into our entry right after our read.
          this.races--;
          e.inblob = new Uint8Array(64).fill(0xee);
          e.generation++;
        }
        return out;
      }
      case 'inblob':
      case 'privlevel':
        throw fsError('EACCES', path);
    }
    throw fsError('ENOENT', path);
  }

  private async generate(e: Entry): Promise<void> {
    const a = this.o.authority;
    if (!a) {
      if (!this.o.outblob) throw fsError('EIO', 'outblob');
      e.report = { report: this.o.outblob(e.inblob!), endorsementKey: new Uint8Array(), signingKey: 'vcek' };
      e.readGeneration = e.generation;
      return;
    }
    let reportData = e.inblob!;
    if (e.serviceProvider !== undefined) {
      if (e.serviceProvider !== 'svsm') throw fsError('EINVAL', 'outblob');
      // Like an SVSM: the report data is SHA-512 over the nonce and the services manifest.
      e.manifest = utf8.encode('{"fake-svsm-services":[]}');
      reportData = new Uint8Array(
        await crypto.subtle.digest('SHA-512', bs(concatBytes(e.inblob!, e.manifest))),
      );
    }
    const report = await a.issue({ reportData, vmpl: e.privlevel });
    this.issued.push(report);
    e.report = report;
    e.auxblob = this.o.withCerts
      ? certTable([
          [GUID_VCEK, report.endorsementKey],
          [GUID_ASK, new Uint8Array(a.ask.rawData)],
          [GUID_ARK, new Uint8Array(a.ark.rawData)],
        ])
      : new Uint8Array();
    e.readGeneration = e.generation;
  }
}
