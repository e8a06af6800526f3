/**
 * Where private directories are made by default: a memory file system. A module of its own so that
 * `cloister run --help` can name it without loading the agent (see bench/cli-start.js).
 */
export const DEFAULT_PRIVATE_PARENT = '/dev/shm';
