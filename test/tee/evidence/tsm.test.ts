import { beforeAll, describe, expect, it } from 'vitest';
import { detectKind } from '../../../src/attest/registry.js';
import { GUID_ARK, GUID_ASK, GUID_VCEK } from '../../../src/attest/snp/certtable.js';
import {
  certTableCollateral,
  parseCertTable,
  parseReport,
  snpVerifier,
} from '../../../src/attest/snp/index.js';
import { SnpTestAuthority } from '../../../src/attest/testing/snp.js';
import type { AgentFs } from '../../../src/tee/evidence/fs.js';
import { TsmAttester } from '../../../src/tee/evidence/tsm.js';
import { CollectionError } from '../../../src/tee/evidence/types.js';
import { toHex } from '../../../src/util/bytes.js';
import { FakeTsm } from './fake-tsm.js';

const ROOT = '/sys/kernel/config/tsm/report';
let authority: SnpTestAuthority;

beforeAll(async () => {
  authority = await SnpTestAuthority.create();
});

const reportData = (b: number) => new Uint8Array(64).fill(b);

function snpTsm(extra: Partial<ConstructorParameters<typeof FakeTsm>[0]> = {}) {
  return new FakeTsm({ root: ROOT, authority, provider: 'sev_guest', ...extra });
}

async function rejection(p: Promise<unknown>): Promise<CollectionError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(CollectionError);
  return e as CollectionError;
}

describe('TsmAttester over configfs-tsm (SEV-SNP, fake kernel)', () => {
  it('collects a report whose REPORT_DATA is the inblob, verified end to end by the SNP verifier', async () => {
    const fake = snpTsm();
    const rd = crypto.getRandomValues(new Uint8Array(64));
    const got = await new TsmAttester({ fs: fake, root: ROOT }).collect(rd);
    expect(got).toMatchObject({ kind: 'snp', provider: 'sev_guest', attempts: 1 });
    expect(got.auxblob).toBeUndefined();
    expect(detectKind(got.evidence)).toBe('snp');
    expect(parseReport(got.evidence).reportData).toEqual(rd);
    const a = await snpVerifier.appraiseEvidence(got.evidence, {
      at: new Date(),
      collateral: authority.collateral(fake.issued.at(-1)!),
      trustAnchors: [authority.trustAnchor],
      expectedReportData: rd,
    });
    expect(a.claims.report_data).toBe(toHex(rd));
    expect(a.status).not.toBe('contraindicated');
    // The entry was created, used once and removed.
    expect(fake.created).toHaveLength(1);
    expect(fake.removed).toEqual(fake.created);
    expect(fake.live()).toEqual([]);
  });

  it('pads shorter report data to 64 bytes; a different report data is refused by the verifier', async () => {
    const fake = snpTsm();
    const got = await new TsmAttester({ fs: fake, root: ROOT }).collect(new Uint8Array([1, 2, 3]));
    const padded = new Uint8Array(64);
    padded.set([1, 2, 3]);
    expect(parseReport(got.evidence).reportData).toEqual(padded);
    await expect(
      snpVerifier.appraiseEvidence(got.evidence, {
        at: new Date(),
        collateral: authority.collateral(fake.issued.at(-1)!),
        trustAnchors: [authority.trustAnchor],
        expectedReportData: reportData(9),
      }),
    ).rejects.toMatchObject({ code: 'report-data-mismatch' });
  });

  it('returns the auxblob certificate table, which alone is enough collateral to verify the report', async () => {
    const fake = snpTsm({ withCerts: true });
    const rd = reportData(0x42);
    const got = await new TsmAttester({ fs: fake, root: ROOT }).collect(rd);
    expect(got.auxblob).toBeDefined();
    const table = parseCertTable(got.auxblob!);
    expect(table.map((e) => e.guid)).toEqual([GUID_VCEK, GUID_ASK, GUID_ARK]);
    expect(table[0]!.data).toEqual(fake.issued.at(-1)!.endorsementKey);
    const a = await snpVerifier.appraiseEvidence(got.evidence, {
      at: new Date(),
      collateral: certTableCollateral(got.auxblob!),
      trustAnchors: [authority.trustAnchor],
      expectedReportData: rd,
    });
    expect(a.claims.report_data).toBe(toHex(rd));
  });

  it.each(['before', 'after'] as const)(
    'retries in a fresh entry when another writer races once (%s our outblob read)',
    async (when) => {
      const fake = snpTsm({ withCerts: true });
      fake.raceOnRead(1, when);
      const rd = reportData(7);
      const got = await new TsmAttester({ fs: fake, root: ROOT }).collect(rd);
      expect(got.attempts).toBe(2);
      expect(parseReport(got.evidence).reportData).toEqual(rd);
      // The certificate table is the one issued with our report, not the racer's.
      expect(parseCertTable(got.auxblob!)[0]!.data).toEqual(fake.issued.at(-1)!.endorsementKey);
      expect(fake.created).toHaveLength(2);
      expect(new Set(fake.created).size).toBe(2);
      expect(fake.live()).toEqual([]);
    },
  );

  it('gives up with generation-race after maxAttempts when the generation always moves', async () => {
    const fake = snpTsm();
    fake.raceOnRead(100);
    const e = await rejection(
      new TsmAttester({ fs: fake, root: ROOT, maxAttempts: 4 }).collect(reportData(1)),
    );
    expect(e.code).toBe('generation-race');
    expect(e.message).toMatch(/4 attempts/);
    expect(fake.created).toHaveLength(4);
    expect(fake.removed).toEqual(fake.created);
    expect(fake.live()).toEqual([]);
  });

  it.each([
    ['provider', 'EIO'],
    ['generation', 'EIO'],
    ['inblob', 'EBUSY'],
    ['outblob', 'EIO'],
    ['auxblob', 'EIO'],
  ])('removes the entry when %s fails (%s) and says which file', async (file, errno) => {
    const fake = snpTsm();
    fake.failOn(file, errno);
    const e = await rejection(new TsmAttester({ fs: fake, root: ROOT }).collect(reportData(1)));
    expect(e.code).toBe('tsm-io');
    expect(e.message).toContain(`/${file}`);
    expect(e.message).toContain(errno);
    expect(fake.created).toHaveLength(1);
    expect(fake.live()).toEqual([]);
  });

  it('explains EFBIG on outblob', async () => {
    const fake = snpTsm();
    fake.failOn('outblob', 'EFBIG');
    const e = await rejection(new TsmAttester({ fs: fake, root: ROOT }).collect(reportData(1)));
    expect(e.message).toMatch(/larger than configfs-tsm allows/);
    expect(fake.live()).toEqual([]);
  });

  it('refuses an unknown provider, naming it, and removes the entry', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'arm_cca_guest' });
    const e = await rejection(new TsmAttester({ fs: fake, root: ROOT }).collect(reportData(1)));
    expect(e.code).toBe('unknown-provider');
    expect(e.message).toMatch(/"arm_cca_guest".*supported: tdx_guest, sev_guest/);
    expect(fake.live()).toEqual([]);
  });

  it('refuses a provider other than the detected one', async () => {
    const fake = snpTsm();
    const e = await rejection(
      new TsmAttester({ fs: fake, root: ROOT, expectKind: 'tdx' }).collect(reportData(1)),
    );
    expect(e.code).toBe('provider-changed');
    expect(fake.live()).toEqual([]);
  });

  it('says why when no provider driver is loaded (ENXIO) or configfs-tsm is missing', async () => {
    const noDriver = new FakeTsm({ root: ROOT, provider: undefined });
    const e1 = await rejection(new TsmAttester({ fs: noDriver, root: ROOT }).collect(reportData(1)));
    expect(e1.code).toBe('tsm-unavailable');
    expect(e1.message).toMatch(/no TSM provider is registered.*tdx_guest or sev_guest/);
    const missing = new FakeTsm({ root: ROOT, authority, provider: 'sev_guest', present: false });
    const e2 = await rejection(new TsmAttester({ fs: missing, root: ROOT }).collect(reportData(1)));
    expect(e2.code).toBe('tsm-unavailable');
    expect(e2.message).toMatch(/does not exist.*Linux ≥ 6\.7/);
  });

  it('refuses report data over 64 bytes before touching configfs', async () => {
    const fake = snpTsm();
    const e = await rejection(new TsmAttester({ fs: fake, root: ROOT }).collect(new Uint8Array(65)));
    expect(e.code).toBe('report-data-too-long');
    expect(fake.created).toEqual([]);
  });

  it('refuses an outblob that does not carry the inblob (stale or substituted report)', async () => {
    const fake = snpTsm();
    const other = await authority.issue({ reportData: reportData(0xaa) });
    const fs: AgentFs = {
      readFile: (p) => (p.endsWith('/outblob') ? Promise.resolve(other.report) : fake.readFile(p)),
      writeFile: (p, d) => fake.writeFile(p, d),
      mkdir: (p) => fake.mkdir(p),
      rmdir: (p) => fake.rmdir(p),
      readdir: (p) => fake.readdir(p),
      exists: (p) => fake.exists(p),
    };
    const e = await rejection(new TsmAttester({ fs, root: ROOT }).collect(reportData(1)));
    expect(e.code).toBe('report-data-mismatch');
    expect(e.message).toContain('aa'.repeat(64));
    expect(fake.live()).toEqual([]);
  });

  it('writes the privlevel floor (VMPL) when above 0, and refuses a privlevel below it', async () => {
    const fake = snpTsm({ privlevelFloor: 2 });
    const got = await new TsmAttester({ fs: fake, root: ROOT }).collect(reportData(3));
    expect(parseReport(got.evidence).vmpl).toBe(2);
    const e = await rejection(new TsmAttester({ fs: fake, root: ROOT, privlevel: 1 }).collect(reportData(3)));
    expect(e.code).toBe('bad-privlevel');
    expect(fake.live()).toEqual([]);
    const explicit = await new TsmAttester({ fs: snpTsm(), root: ROOT, privlevel: 3 }).collect(reportData(3));
    expect(parseReport(explicit.evidence).vmpl).toBe(3);
  });

  it('asks an SVSM service provider when told to, counting its write, and returns the manifest', async () => {
    const fake = snpTsm();
    const rd = reportData(4);
    const got = await new TsmAttester({ fs: fake, root: ROOT, serviceProvider: 'svsm' }).collect(rd);
    expect(got.manifestblob).toBeDefined();
    const digest = new Uint8Array(
      await crypto.subtle.digest('SHA-512', new Uint8Array([...rd, ...got.manifestblob!])),
    );
    expect(parseReport(got.evidence).reportData).toEqual(digest);
    expect(got.attempts).toBe(1);
    expect(fake.live()).toEqual([]);
    const tdx = new FakeTsm({ root: ROOT, provider: 'tdx_guest', outblob: () => new Uint8Array(1) });
    const e = await rejection(new TsmAttester({ fs: tdx, root: ROOT, serviceProvider: 'svsm' }).collect(rd));
    expect(e.code).toBe('bad-service-provider');
    expect(tdx.live()).toEqual([]);
  });

  it('provider() probes with an entry it removes again', async () => {
    const fake = snpTsm();
    expect(await new TsmAttester({ fs: fake, root: ROOT }).provider()).toBe('sev_guest');
    expect(fake.created).toHaveLength(1);
    expect(fake.created[0]).toMatch(/^cloister-probe-[0-9a-f]{16}$/);
    expect(fake.live()).toEqual([]);
  });
});

describe('TsmAttester over configfs-tsm (TDX provider)', () => {
  // A quote-shaped outblob (header v4, TEE type 0x81, report data at byte 568); the TDX verifier and
  // its test authority live on another branch, so this checks the collection path and layout only.
  const quote = (inblob: Uint8Array) => {
    const q = new Uint8Array(1024);
    const dv = new DataView(q.buffer);
    dv.setUint16(0, 4, true);
    dv.setUint16(2, 2, true);
    dv.setUint32(4, 0x81, true);
    q.set(inblob, 568);
    return q;
  };

  it('returns the quote as tdx evidence, with no auxblob', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', outblob: quote });
    const rd = reportData(0x5a);
    const got = await new TsmAttester({ fs: fake, root: ROOT }).collect(rd);
    expect(got).toMatchObject({ kind: 'tdx', provider: 'tdx_guest' });
    expect(got.auxblob).toBeUndefined();
    expect(detectKind(got.evidence)).toBe('tdx');
    expect(got.evidence.subarray(568, 632)).toEqual(rd);
    expect(fake.live()).toEqual([]);
  });

  it('refuses a quote whose report data is not the inblob', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', outblob: () => quote(reportData(0)) });
    const e = await rejection(new TsmAttester({ fs: fake, root: ROOT }).collect(reportData(1)));
    expect(e.code).toBe('report-data-mismatch');
  });
});
