import { expect, it } from 'vitest';
import { cloister } from './run.js';

it('cloister demo runs end to end and shows each refusal', () => {
  const r = cloister(['demo']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = r.stdout.toString();
  expect(out).toMatch(/one flipped bit is refused: chunk \d+ failed authentication/);
  expect(out).toMatch(/not a recipient is refused/);
  expect(out).toMatch(/sha256 [0-9a-f]{16}… matches/);
  expect(out).toMatch(/demo complete/);
});
