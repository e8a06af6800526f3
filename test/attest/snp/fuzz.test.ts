import { describe, it } from 'vitest';
import { fuzzReports } from './fuzz.js';

describe('SEV-SNP fuzzing of real reports', () => {
  it('a mutated report is never accepted and always fails with an AttestationError', async () => {
    await fuzzReports(200);
  });
});
