/** The OpenAPI document names the problem types the KBS routes answer with. */
import { describe, expect, it } from 'vitest';
import { openApiDocument } from '../../src/kbs/openapi.js';

type Op = { responses: Record<string, { description: string }> };

describe('openApiDocument', () => {
  const paths = openApiDocument()['paths'] as Record<string, Record<string, Op>>;
  const codes = (route: string, method: string, status: number) =>
    paths[route]![method]!.responses[String(status)]!.description;

  it('lists bearer-disabled for resource requests with an attestation token while bearer tokens are off', () => {
    expect(codes('/kbs/v0/resource/{path}', 'get', 401)).toMatch(/\bbearer-disabled\b/);
    expect(paths['/kbs/v0/resource/{path}']!['get']!).toMatchObject({
      summary: expect.stringMatching(/bearerTokens/),
    });
  });

  it('lists the attestation refusals, and the CoCo evidence shapes in the Attestation schema', () => {
    expect(codes('/kbs/v0/attest', 'post', 400)).toMatch(/malformed-evidence.*unsupported-tee.*unusable-key/);
    expect(codes('/kbs/v0/attest', 'post', 401)).toMatch(/nonce-used.*attestation-report-data-mismatch/);
    const schema = JSON.stringify((openApiDocument()['components'] as { schemas: unknown }).schemas);
    expect(schema).toMatch(/attestation_report, cert_chain/);
    expect(schema).toMatch(/device_evidence_list/);
  });
});
