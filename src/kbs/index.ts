/**
 * The key broker's front door (Node-only): its composition root (`startBroker`), configuration, stores,
 * secrets, tenancy and the admin API's HTTP client.
 */
export type { AdminBody } from './admin-client.js';
export { AdminClient } from './admin-client.js';
export { startBroker } from './app.js';
export { DEFAULT_CONFIG, loadConfig } from './config.js';
export { buildLogEntry } from './log.js';
export { masterKeyFromText, SecretBox } from './secrets.js';
export { openStore } from './store/index.js';
export { ADMIN_ROLES, AdminTokenError, signAdminToken } from './tenancy.js';
