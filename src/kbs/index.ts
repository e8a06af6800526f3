/**
 * The key broker's front door (Node-only): its composition root (`startBroker`), configuration, stores,
 * secrets and admin tokens. The admin API's HTTP client is its light door, admin-client.ts.
 */
export { offlinePublicKeys, publishedEarKey, startBroker } from './app.js';
export { DEFAULT_CONFIG, loadConfig } from './config.js';
export { buildLogEntry } from './log.js';
export { masterKeyFromText, SecretBox } from './secrets.js';
export { openStore } from './store/index.js';
export { AdminTokenError, signAdminToken } from './tenancy.js';
