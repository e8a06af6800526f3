/**
 * `cloister demo finetune` end to end (slow: it trains a base and an adapter and starts two servers):
 * the vendor refuses the merged job, the adapter lowers the held-out perplexity, and base + adapter
 * answer the help desk's questions where the base alone does not.
 */
import { expect, it, vi } from 'vitest';
import { cliTimeouts, cloister } from './run.js';

vi.setConfig(cliTimeouts(180_000));

it('cloister demo finetune: two brokers, a merged output refused, LoRA in the TEE, a better answer with the adapter', () => {
  const r = cloister(['demo', 'finetune']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = r.stdout.toString();
  const refused = out.slice(out.indexOf('is refused by the vendor'), out.indexOf('6. cloister train'));
  expect(refused).toMatch(/resource vendor\/models\/kek1 refused by the key broker \(403 denied\)/);
  const ppl = /base alone (\d+\.\d+) → with the adapter (\d+\.\d+)/.exec(out);
  expect(ppl).not.toBeNull();
  expect(Number(ppl![2])).toBeLessThan(Number(ppl![1]) / 10);
  expect(out).toMatch(/sealed to kbs:\/\/\/helpdesk\/adapters\/kek1 only/);
  expect(out).toMatch(/base \+ adapter: "Restart WireGuard, then call 4410\."/);
  expect(out).toMatch(/demo complete in \d+\.\d s/);
});
