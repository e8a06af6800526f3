/** The OpenAPI 3.1 description served at /openapi.json (kept beside the routes it describes). */
const problem = { $ref: '#/components/schemas/Problem' };
const errors = (...codes: number[]) =>
  Object.fromEntries(
    codes.map((c) => [
      String(c),
      { description: 'RFC 7807 problem', content: { 'application/problem+json': { schema: problem } } },
    ]),
  );
/** Problem responses whose `type` (https://cloister.dev/problems/<code>) is one of the listed codes. */
const problems = (byStatus: Record<number, string[]>) =>
  Object.fromEntries(
    Object.entries(byStatus).map(([status, codes]) => [
      status,
      {
        description: `RFC 7807 problem; type: ${codes.join(', ')}`,
        content: { 'application/problem+json': { schema: problem } },
      },
    ]),
  );
const admin = [{ adminToken: [] }];
const path = {
  name: 'path',
  in: 'path',
  required: true,
  description: '<repository>/<type>/<tag>',
  schema: { type: 'string' },
};

export function openApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'Cloister key broker',
      version: '0.4.0',
      description:
        'CoCo KBS protocol 0.4.0 plus the Cloister admin API. See docs/kbs.md and docs/kbs-protocol.md.',
    },
    paths: {
      '/kbs/v0/auth': {
        post: {
          summary: 'Request → Challenge; sets the kbs-session-id cookie',
          requestBody: {
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Request' } } },
          },
          responses: {
            200: {
              description: 'Challenge',
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Challenge' } } },
            },
            ...problems({
              400: ['malformed-json', 'malformed-request', 'unsupported-version', 'unsupported-tee'],
              413: ['body-too-large'],
              415: ['unsupported-media-type'],
              429: ['rate-limited'],
            }),
          },
        },
      },
      '/kbs/v0/attest': {
        post: {
          summary: 'Attestation → EAR token (ES256 JWT)',
          requestBody: {
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Attestation' } } },
          },
          responses: {
            200: { description: '{token}' },
            ...problems({
              400: [
                'malformed-json',
                'malformed-attestation',
                'malformed-evidence',
                'unsupported-tee',
                'unusable-key',
                'bad-init-data',
              ],
              401: [
                'no-session',
                'unknown-session',
                'session-expired',
                'nonce-used',
                'nonce-mismatch',
                'attestation-report-data-mismatch',
              ],
              403: ["attestation-<code> (the verifier's code, e.g. attestation-gpu-not-bound)"],
              413: ['body-too-large'],
              415: ['unsupported-media-type'],
              429: ['rate-limited'],
            }),
          },
        },
      },
      '/kbs/v0/resource/{path}': {
        get: {
          summary:
            'A resource as a flattened JWE to the TEE key (session cookie; an attestation token as bearer only with bearerTokens on)',
          parameters: [path],
          responses: {
            200: { description: 'flattened JWE' },
            ...problems({
              400: ['bad-resource-path'],
              401: [
                'no-session',
                'unknown-session',
                'session-expired',
                'not-attested',
                'token-expired',
                'bearer-disabled',
                'bad-token',
              ],
              403: ['denied (detail exactly "denied by policy", also for an unknown resource)'],
              429: ['rate-limited'],
            }),
          },
        },
      },
      '/admin/v1/resources': {
        get: {
          summary: 'List resource metadata (never values)',
          security: admin,
          responses: { 200: { description: '{resources}' }, ...errors(401, 403) },
        },
      },
      '/admin/v1/resources/{path}': {
        put: {
          summary: 'Create a resource (body: the value, application/octet-stream)',
          security: admin,
          parameters: [path],
          responses: { 201: { description: 'metadata' }, ...errors(400, 401, 403, 409, 413, 415) },
        },
        post: {
          summary: 'Rotate: store a new version of the value',
          security: admin,
          parameters: [path],
          responses: { 200: { description: 'metadata' }, ...errors(400, 401, 403, 404, 413, 415) },
        },
        delete: {
          summary: 'Delete a resource',
          security: admin,
          parameters: [path],
          responses: { 204: { description: 'deleted' }, ...errors(401, 403, 404) },
        },
      },
      '/admin/v1/policies': {
        get: {
          summary: 'List active policies',
          security: admin,
          responses: { 200: { description: '{policies}' } },
        },
        put: {
          summary: 'Set a CEL policy for "default", "repository:<name>" or "resource:<path>"',
          security: admin,
          responses: { 200: { description: 'policy record' }, ...errors(400, 401, 403) },
        },
      },
      '/admin/v1/policy/evaluate': {
        post: {
          summary: 'Explain why a token would be allowed or denied a resource',
          security: admin,
          responses: {
            200: { description: '{allow, reasons, policyScope, clauses}' },
            ...errors(400, 401, 403),
          },
        },
      },
      '/admin/v1/refvalues': {
        get: {
          summary: 'List reference values',
          security: admin,
          responses: { 200: { description: '{refvalues}' } },
        },
        post: {
          summary: 'Add a reference value (a new version)',
          security: admin,
          responses: { 201: { description: 'record' }, ...errors(400, 401, 403) },
        },
      },
      '/admin/v1/tokens/revoke': {
        post: {
          summary: 'Revoke an admin token by its id (jti): {tokenId, expiresAt?, reason?}; admins only',
          security: admin,
          responses: { 201: { description: 'revocation record' }, ...errors(400, 401, 403, 409) },
        },
      },
      '/admin/v1/tokens/revoked': {
        get: {
          summary: 'List revoked admin tokens (admins and global auditors)',
          security: admin,
          responses: { 200: { description: '{revoked}' }, ...errors(401, 403) },
        },
      },
      '/admin/v1/log/entries': {
        get: {
          summary: 'Transparency-log entries [from, to)',
          security: admin,
          responses: { 200: { description: '{size, entries}' } },
        },
      },
      '/admin/v1/log/bundle': {
        get: {
          summary: 'Export the log as a bundle for `cloister log verify` (?from, ?to, ?proofs=all)',
          security: admin,
          responses: { 200: { description: 'application/jsonl bundle' }, ...errors(401, 403) },
        },
      },
      '/admin/v1/log/checkpoint': {
        post: {
          summary: 'Sign a checkpoint now',
          security: admin,
          responses: { 200: { description: '{checkpoint}' } },
        },
      },
      '/healthz': {
        get: { summary: 'Liveness (never rate-limited)', responses: { 200: { description: 'ok' } } },
      },
      '/readyz': {
        get: {
          summary: "Readiness: the store's database answers (never rate-limited)",
          responses: { 200: { description: 'ready' }, ...errors(503) },
        },
      },
      '/metrics': {
        get: { summary: 'Prometheus metrics', responses: { 200: { description: 'text exposition format' } } },
      },
    },
    components: {
      securitySchemes: {
        adminToken: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT (EdDSA or ES256), aud cloister-kbs-admin',
        },
      },
      schemas: {
        Problem: {
          type: 'object',
          required: ['type', 'title', 'status', 'detail'],
          properties: {
            type: { type: 'string' },
            title: { type: 'string' },
            status: { type: 'integer' },
            detail: { type: 'string' },
          },
        },
        Request: {
          type: 'object',
          required: ['version', 'tee'],
          properties: {
            version: { type: 'string', example: '0.4.0' },
            tee: { type: 'string' },
            'extra-params': {},
          },
        },
        Challenge: {
          type: 'object',
          properties: { nonce: { type: 'string', description: '32 bytes, base64' }, 'extra-params': {} },
        },
        Attestation: {
          type: 'object',
          required: ['runtime-data', 'tee-evidence'],
          properties: {
            'runtime-data': {
              type: 'object',
              required: ['nonce', 'tee-pubkey'],
              properties: { nonce: { type: 'string' }, 'tee-pubkey': { type: 'object', description: 'JWK' } },
            },
            'tee-evidence': {
              type: 'object',
              required: ['primary_evidence'],
              properties: {
                primary_evidence: {
                  description:
                    'per TEE (docs/kbs-protocol.md §4): tdx/sgx {quote, cc_eventlog?}; snp {attestation_report, cert_chain} (guest-components) or {report, vcek?, vlek?}; Azure and sample JSON',
                },
                additional_evidence: {
                  type: 'string',
                  description:
                    'JSON: {"nvidia": {"device_evidence_list": [...]}} (guest-components) or {"nvidia": {"gpus": [...]}}; "" without devices',
                },
              },
            },
            'init-data': {
              type: 'object',
              properties: { format: { type: 'string' }, body: { type: 'string' } },
            },
          },
        },
      },
    },
  };
}
