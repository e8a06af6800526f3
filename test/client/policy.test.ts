import { describe, expect, it } from 'vitest';
import { DEFAULT_CLIENT_POLICY, PolicyFileError, parseClientPolicy } from '../../src/client/policy.js';

describe('client policies', () => {
  it('defaults to hardware TEEs, affirming, fresh evidence', () => {
    expect(parseClientPolicy('{}')).toEqual(DEFAULT_CLIENT_POLICY);
    expect(DEFAULT_CLIENT_POLICY.tees).not.toContain('sample');
  });

  it('reads every field', () => {
    const p = parseClientPolicy({
      tees: ['tdx'],
      minStatus: 'warning',
      measurements: { mr_td: ['ab'] },
      models: ['sha256:00'],
      software: { versions: ['0.1.0'], digests: ['sha256:11'] },
      fresh: false,
      requireGpu: true,
      sharedKeys: ['kbs:///acme/serving/keys'],
    });
    expect(p).toEqual({
      tees: ['tdx'],
      minStatus: 'warning',
      measurements: { mr_td: ['ab'] },
      models: ['sha256:00'],
      software: { versions: ['0.1.0'], digests: ['sha256:11'] },
      fresh: false,
      requireGpu: true,
      sharedKeys: ['kbs:///acme/serving/keys'],
    });
  });

  it('refuses typos and wrong types rather than loosening the policy', () => {
    for (const bad of [
      'not json',
      '[]',
      '{"tee": ["tdx"]}',
      '{"tees": "tdx"}',
      '{"minStatus": "contraindicated"}',
      '{"measurements": {"mr_td": "ab"}}',
      '{"fresh": "yes"}',
      '{"sharedKeys": "kbs:///a/b/c"}',
      '{"software": {"versions": [1]}}',
    ]) {
      expect(() => parseClientPolicy(bad), bad).toThrow(PolicyFileError);
    }
  });
});
