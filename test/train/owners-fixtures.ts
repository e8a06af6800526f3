/**
 * The owners' side of the training tests with real brokers (owners.test.ts, finetune-owners.test.ts):
 * each owner stores its key and sets its release policy as its broker's tenant admin.
 */
import { expect } from 'vitest';
import { generateKek, type KekKey, kekToJwk } from '../../src/seal/keys.js';
import { utf8 } from '../../src/util/bytes.js';
import type { TestBroker } from '../kbs/helpers.js';

/** A new KEK named kbs:///`path`, stored in `b` under `path` by `tenant`'s tenant admin. */
export async function storeKek(b: TestBroker, tenant: string, path: string): Promise<KekKey> {
  const kek = generateKek(`kbs:///${path}`);
  const put = await b.call(
    'PUT',
    `/admin/v1/resources/${path}`,
    await b.admin('tenant-admin', tenant),
    utf8.encode(JSON.stringify(kekToJwk(kek))),
  );
  expect(put.status).toBe(201);
  return kek;
}

/** `tenant`'s release policy (`source`) for the resource `path` in `b`. */
export async function setPolicy(b: TestBroker, tenant: string, path: string, source: string): Promise<void> {
  const r = await b.call('PUT', '/admin/v1/policies', await b.admin('tenant-admin', tenant), {
    scope: `resource:${path}`,
    source,
  });
  expect(r.status).toBe(200);
}

/** A policy clause: the sample TEE in dev mode, running the trainer of `digest` (as its init-data names it). */
export const approvesTrainer = (digest: string) =>
  `dev_mode && cpu.insecure && init_data.?data["cloister.train.trainer"].orValue("") == "${digest}"`;
