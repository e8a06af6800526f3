import { describe, it } from 'vitest';
import { fuzzReports } from './fuzz.js';

describe('SEV-SNP fuzzing of real reports (heavy)', () => {
  it('20 000 mutations: never accepted, always an AttestationError', async () => {
    await fuzzReports(20_000);
  });
});
