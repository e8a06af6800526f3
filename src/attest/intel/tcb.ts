/**
 * TCB level matching and status convergence exactly as Intel's QVL does it (TcbLevelCheck.cpp,
 * TdxModuleCheck.cpp, TDRelaunchCheck.cpp; section numbers of Intel's verification spec in comments):
 * the platform level from the PCK certificate's SGX components and PCESVN (and, for TDX, TEE_TCB_SVN
 * against the TDX components), the TDX module level from its identity, the QE level from its ISVSVN,
 * then one combined status.
 */
import { toHex } from '../../util/index.js';
import { AttestationError } from '../common/types.js';
import type { IsvTcbLevel, TcbLevel, TcbLevelStatus } from './collateral.js';
import type { VerifiedQuote } from './verify.js';

export type TcbStatus = TcbLevelStatus | 'TDRelaunchAdvised' | 'TDRelaunchAdvisedConfigurationNeeded';

export interface TcbEvaluation {
  /** The combined status (what Intel's QVL returns). */
  status: TcbStatus;
  /** Status of the matched TCB info level (the TDX level for TDX quotes). */
  platformStatus: TcbLevelStatus;
  /** TDX only: status of the TDX module level ('UpToDate' when the module has major version 0). */
  tdxModuleStatus?: TcbLevelStatus;
  qeStatus: TcbLevelStatus;
  /** Advisories of the matched platform level, TDX module level and QE level, without repeats. */
  advisoryIds: string[];
  tcbDate: string;
  qeTcbDate: string;
  tcbLevel: TcbLevel;
}

function notSupported(message: string): never {
  throw new AttestationError('appraise', 'tcb-level-not-found', message);
}

const CONFIG_NEEDED = new Set<TcbStatus>([
  'ConfigurationNeeded',
  'OutOfDateConfigurationNeeded',
  'ConfigurationAndSWHardeningNeeded',
  'TDRelaunchAdvisedConfigurationNeeded',
]);

/** Folds an OutOfDate/Revoked component (TDX module or QE) into a level status. */
function converge(level: TcbStatus, other: TcbLevelStatus): TcbStatus {
  if (other === 'OutOfDate') {
    if (level === 'UpToDate' || level === 'SWHardeningNeeded') return 'OutOfDate';
    if (level === 'ConfigurationNeeded' || level === 'ConfigurationAndSWHardeningNeeded') {
      return 'OutOfDateConfigurationNeeded';
    }
  }
  if (other === 'Revoked') return 'Revoked';
  return level;
}

/** QE identity levels know UpToDate, OutOfDate and Revoked; QVL reads anything else as OutOfDate. */
function qeStatusOf(s: TcbLevelStatus): TcbLevelStatus {
  return s === 'UpToDate' || s === 'Revoked' ? s : 'OutOfDate';
}

function atLeast(have: ArrayLike<number>, want: number[], from = 0): boolean {
  for (let i = from; i < 16; i++) if (have[i]! < want[i]!) return false;
  return true;
}

function isvLevel(levels: IsvTcbLevel[], svn: number): IsvTcbLevel | undefined {
  return levels.find((l) => svn >= l.isvsvn);
}

export function evaluateTcb(v: VerifiedQuote): TcbEvaluation {
  const q = v.quote;
  const td = q.body.kind === 'sgx' ? undefined : q.body.report;

  // 4.1.2.9.9-10: QE level from the QE report's ISVSVN.
  const qeLevel = isvLevel(v.qeIdentity.tcbLevels, q.qeReport.isvSvn);
  if (!qeLevel) {
    notSupported(
      `QE ISVSVN ${q.qeReport.isvSvn} is below every level of the QE identity (lowest ${v.qeIdentity.tcbLevels.at(-1)?.isvsvn})`,
    );
  }
  const qeStatus = qeStatusOf(qeLevel.tcbStatus);

  // 4.1.2.4.17.1-3: first level (highest first) the PCK TCB reaches; for TDX also TEE_TCB_SVN.
  const { components, pcesvn } = v.pck.tcb;
  // With a TDX module of major version > 0, TEE_TCB_SVN[0..1] is judged by the module identity.
  const tdxFrom = td && td.teeTcbSvn[1]! > 0 ? 2 : 0;
  let sgxLevel: TcbLevel | undefined;
  let tdxLevel: TcbLevel | undefined;
  for (const level of v.tcbInfo.tcbLevels) {
    if (!atLeast(components, level.sgxComponents) || pcesvn < level.pcesvn) continue;
    sgxLevel ??= level;
    if (!td) break;
    if (atLeast(td.teeTcbSvn, level.tdxComponents!, tdxFrom)) {
      tdxLevel = level;
      break;
    }
  }
  if (!sgxLevel) {
    notSupported(
      `the PCK certificate's TCB (SGX components ${components.join(',')}, PCESVN ${pcesvn}) is below every level of the TCB info for FMSPC ${toHex(v.pck.fmspc)}: the platform needs a microcode/BIOS update`,
    );
  }
  if (!td) {
    return {
      status: converge(sgxLevel.tcbStatus, qeStatus),
      platformStatus: sgxLevel.tcbStatus,
      qeStatus,
      advisoryIds: [...new Set([...sgxLevel.advisoryIds, ...qeLevel.advisoryIds])],
      tcbDate: sgxLevel.tcbDate,
      qeTcbDate: qeLevel.tcbDate,
      tcbLevel: sgxLevel,
    };
  }
  if (!tdxLevel) {
    notSupported(
      `TEE_TCB_SVN ${[...td.teeTcbSvn].join(',')} is below every TDX level of the TCB info that the platform's SGX TCB reaches`,
    );
  }

  // 4.1.2.4.17.4.1: TDX module level (major version 0 has no module identity: UpToDate).
  let moduleStatus: TcbLevelStatus = 'UpToDate';
  let moduleLevel: IsvTcbLevel | undefined;
  if (v.tdxModuleIdentity) {
    moduleLevel = isvLevel(v.tdxModuleIdentity.tcbLevels, td.teeTcbSvn[0]!);
    if (!moduleLevel) {
      notSupported(`TDX module ISVSVN ${td.teeTcbSvn[0]} is below every level of ${v.tdxModuleIdentity.id}`);
    }
    moduleStatus = moduleLevel.tcbStatus;
  }
  let status = converge(tdxLevel.tcbStatus, moduleStatus);
  const advisories = new Set([
    ...tdxLevel.advisoryIds,
    ...(moduleLevel?.advisoryIds ?? []),
    ...qeLevel.advisoryIds,
  ]);
  const result = (s: TcbStatus): TcbEvaluation => ({
    status: s,
    platformStatus: tdxLevel.tcbStatus,
    tdxModuleStatus: moduleStatus,
    qeStatus,
    advisoryIds: [...advisories],
    tcbDate: tdxLevel.tcbDate,
    qeTcbDate: qeLevel.tcbDate,
    tcbLevel: tdxLevel,
  });
  if (status === 'Revoked') return result(status);

  // 4.1.2.4.17.4.3: a TD 1.5 report whose TEE_TCB_SVN2 (the module now running, after a TD-preserving
  // update) reaches the latest level only needs the TD relaunched.
  if (q.body.kind === 'td15' && td.teeTcbSvn2) {
    status = relaunch(td.teeTcbSvn2, v, sgxLevel.tcbStatus, status, moduleStatus, qeStatus);
  }
  return result(converge(status, qeStatus));
}

function relaunch(
  svn2: Uint8Array,
  v: VerifiedQuote,
  sgxStatus: TcbLevelStatus,
  tdxStatus: TcbStatus,
  moduleStatus: TcbLevelStatus,
  qeStatus: TcbLevelStatus,
): TcbStatus {
  if (qeStatus !== 'UpToDate') return tdxStatus;
  if (
    !['UpToDate', 'SWHardeningNeeded', 'ConfigurationNeeded', 'ConfigurationAndSWHardeningNeeded'].includes(
      sgxStatus,
    )
  ) {
    return tdxStatus;
  }
  if (tdxStatus !== 'OutOfDate' && tdxStatus !== 'OutOfDateConfigurationNeeded') return tdxStatus;
  if (moduleStatus !== 'OutOfDate') return tdxStatus;
  const latest = v.tcbInfo.tcbLevels[0];
  if (!latest) notSupported('TCB info has no levels');
  let moduleOk: boolean;
  if (svn2[1] === 0) {
    moduleOk = svn2[0]! >= latest.tdxComponents![0]!;
  } else {
    const want = `TDX_${svn2[1]!.toString(16).padStart(2, '0').toUpperCase()}`;
    const id2 = v.tcbInfo.tdxModuleIdentities?.find((m) => m.id.toUpperCase() === want);
    if (!id2) {
      throw new AttestationError(
        'appraise',
        'tdx-module-mismatch',
        `TCB info lists no TDX module identity ${want} (TEE_TCB_SVN2)`,
      );
    }
    const top = id2.tcbLevels[0];
    if (!top) notSupported(`${want} has no TCB levels`);
    moduleOk = svn2[0]! >= top.isvsvn;
  }
  if (!moduleOk || svn2[2]! < latest.tdxComponents![2]!) return tdxStatus;
  return CONFIG_NEEDED.has(sgxStatus) || CONFIG_NEEDED.has(tdxStatus)
    ? 'TDRelaunchAdvisedConfigurationNeeded'
    : 'TDRelaunchAdvised';
}
