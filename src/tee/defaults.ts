/**
 * Where the agent looks and writes by default, in a module of its own (a light front door) so that
 * `cloister agent --help` and `cloister run --help` can name these without loading the agent (see
 * bench/cli.js).
 */

/** Linux configfs-tsm: TDX and SEV-SNP reports. */
export const DEFAULT_TSM_ROOT = '/sys/kernel/config/tsm/report';
/** Gramine's attestation pseudo-files inside an SGX enclave. */
export const DEFAULT_GRAMINE_ROOT = '/dev/attestation';
/** Where GPUs are looked for. */
export const DEFAULT_DEV_ROOT = '/dev';
/** Where private directories are made: a memory file system. */
export const DEFAULT_PRIVATE_PARENT = '/dev/shm';
/**
 * Where `cloister agent serve` listens unless --socket says otherwise; README and docs/agent-api.md
 * name the same path (test/cli/agent.test.ts keeps them equal).
 */
export const DEFAULT_AGENT_SOCKET = '/run/cloister/agent.sock';
