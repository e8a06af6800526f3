import { expect, it, vi } from 'vitest';
import { cliTimeouts, cloister } from './run.js';

vi.setConfig(cliTimeouts());

it('cloister demo: broker, sealed model, attested run, a policy refusal, confidential inference and the log verifying', () => {
  const r = cloister(['demo']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = r.stdout.toString();
  expect(out).toMatch(/DEV MODE IS ON/);
  expect(out).toMatch(/key released for .*model\.sealed/);
  expect(out).toMatch(/\[workload\] model 512x512 loaded from \/dev\/shm\//);
  expect(out).toMatch(/the owner unseals the result with its key: norm (\d\.\d+)/);
  expect(out).toMatch(/refused \(exit 1\); nothing was unsealed/);
  expect(out).toMatch(/release of owner\/datasets\/kek1 denied: .*cpu\.kind == "tdx"/);
  expect(out).toMatch(/model {7}tiny-llama {2}sha256:[0-9a-f]{64} {2}\(gguf\)/);
  expect(out).toMatch(/key broker {2}its EAR token verifies and describes the same TEE/);
  expect(out).toMatch(/chat through Oblivious HTTP: "Hello, who are you\?" → "[^"]+"/);
  expect(out).toMatch(
    /1 encrypted request\(s\) of \d+ bytes; a plaintext \/v1 request gets 403 \(plaintext_disabled\)/,
  );
  expect(out).toMatch(
    /a client with the default policy refuses, sending nothing: the server runs in a 'sample' TEE/,
  );
  expect(out).toMatch(/transparency log verified offline: .*2 release, 1 denial/);
  expect(out).toMatch(/demo complete in \d+\.\d s/);
});
