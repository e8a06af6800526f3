import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveTrainingApi, TRAIN_API_STATUS } from '../../src/train/api.js';
import { call, codedError, FakeSession, jobInfo, problemOf, type Res, typeOf } from './fake-session.js';

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'cloister-train-api-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

let n = 0;
/** A fresh session and server on a fresh socket; `log` collects the server's lines. */
async function start(opts: { maxCheckpointBytes?: number } = {}) {
  const session = new FakeSession(jobInfo({ startModel: '/private/start.pt' }));
  const socketPath = join(work, `t${n++}.sock`);
  const lines: string[] = [];
  const server = await serveTrainingApi({ socketPath, session, log: (l) => lines.push(l), ...opts });
  const c = (
    path: string,
    method?: string,
    body?: Parameters<typeof call>[3],
    headers?: Record<string, string>,
  ) => call(socketPath, path, method, body, headers);
  return { session, socketPath, server, lines, call: c };
}

function expectProblem(r: Res, status: number, type: string, detail?: RegExp) {
  expect(r.headers['content-type']).toBe('application/problem+json');
  expect([r.status, typeOf(r)]).toEqual([status, type]);
  expect(problemOf(r).status).toBe(status);
  if (detail) expect(problemOf(r).detail).toMatch(detail);
}

const json = (o: unknown) => JSON.stringify(o);

describe('training API: socket', () => {
  it('listens on a 0600 socket, removed on close', async () => {
    const t = await start();
    expect(statSync(t.socketPath).mode & 0o777).toBe(0o600);
    expect(statSync(t.socketPath).isSocket()).toBe(true);
    await t.server.close();
    expect(existsSync(t.socketPath)).toBe(false);
  });

  it('replaces a stale socket, refuses a live one, a missing folder and a file', async () => {
    const stale = join(work, 'stale.sock');
    const other = createServer();
    await new Promise<void>((r) => other.listen(stale, r));
    const session = new FakeSession(jobInfo());
    await expect(serveTrainingApi({ socketPath: stale, session })).rejects.toMatchObject({
      code: 'socket-in-use',
    });
    // Closing a net server unlinks its socket; a killed process leaves it behind, stale.
    await new Promise<void>((r) => other.close(() => r()));
    const killed = spawn(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${JSON.stringify(stale)}, () => console.log('up'))`,
    ]);
    await new Promise((r) => killed.stdout.once('data', r));
    killed.kill('SIGKILL');
    await new Promise((r) => killed.once('exit', r));
    expect(statSync(stale).isSocket()).toBe(true);
    const s = await serveTrainingApi({ socketPath: stale, session });
    expect((await call(stale, '/train/v1/job')).status).toBe(200);
    await s.close();

    await expect(
      serveTrainingApi({ socketPath: join(work, 'no-such-dir', 'x.sock'), session }),
    ).rejects.toMatchObject({ code: 'socket-path', message: expect.stringContaining('no-such-dir') });
    const file = join(work, 'plain-file');
    writeFileSync(file, 'x');
    await expect(serveTrainingApi({ socketPath: file, session })).rejects.toMatchObject({
      code: 'socket-path',
    });
    mkdirSync(join(work, 'd'));
    writeFileSync(join(work, 'd', 'f'), '');
    await expect(
      serveTrainingApi({ socketPath: join(work, 'd', 'f', 'x.sock'), session }),
    ).rejects.toMatchObject({
      code: 'socket-path',
    });
  });
});

describe('training API: routes', () => {
  let t: Awaited<ReturnType<typeof start>>;
  beforeAll(async () => {
    t = await start();
  });
  afterAll(() => t.server.close());

  it('GET /train/v1/job: the job info as JSON', async () => {
    const r = await t.call('/train/v1/job');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.headers['cache-control']).toBe('no-store');
    expect(JSON.parse(r.body.toString())).toEqual(t.session.info);
  });

  it('checkpoints: 204 before the first, then save (Content-Length and chunked) and load the latest', async () => {
    const none = await t.call('/train/v1/checkpoint');
    expect([none.status, none.body.length]).toEqual([204, 0]);

    const state = new Uint8Array(300_000).map((_, i) => (i * 7) & 255);
    const saved = await t.call('/train/v1/checkpoint?step=5', 'POST', state, {
      'content-type': 'application/octet-stream',
    });
    expect(saved.status).toBe(201);
    expect(saved.headers['content-type']).toBe('application/json');
    expect(JSON.parse(saved.body.toString())).toEqual({
      number: 1,
      sha256: t.session.checkpoints[0]!.sha256,
    });
    expect(t.session.checkpoints[0]).toMatchObject({ number: 1, step: 5 });
    expect(Buffer.from(t.session.checkpoints[0]!.state).equals(Buffer.from(state))).toBe(true);

    const chunked = await t.call('/train/v1/checkpoint?step=10', 'POST', [
      'abc',
      new Uint8Array([1, 2, 3]),
      'xyz',
    ]);
    expect(chunked.status).toBe(201);
    expect(JSON.parse(chunked.body.toString()).number).toBe(2);

    const latest = await t.call('/train/v1/checkpoint');
    expect(latest.status).toBe(200);
    expect(latest.headers['content-type']).toBe('application/octet-stream');
    expect(latest.headers['cloister-checkpoint-number']).toBe('2');
    expect(latest.headers['cloister-checkpoint-step']).toBe('10');
    expect([...latest.body]).toEqual([...Buffer.from('abc'), 1, 2, 3, ...Buffer.from('xyz')]);
  });

  it('POST /train/v1/checkpoint: a missing or bad step, an empty state', async () => {
    const before = t.session.checkpoints.length;
    for (const q of [
      '',
      '?step=',
      '?step=-1',
      '?step=1.5',
      '?step=abc',
      '?step=1e3',
      '?step=9999999999999999',
      '?other=1',
    ])
      expectProblem(await t.call(`/train/v1/checkpoint${q}`, 'POST', 'state'), 400, 'bad-step', /^step: /);
    expectProblem(await t.call('/train/v1/checkpoint?step=1', 'POST', ''), 400, 'bad-request', /empty/);
    expect(t.session.checkpoints.length).toBe(before);
  });

  it('session refusals: conflict and rollback → 409, other failures → 500 with the message', async () => {
    t.session.failSave = codedError('checkpoint-rollback', 'the broker holds a later checkpoint');
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', 'x'),
      409,
      'checkpoint-rollback',
      /later/,
    );
    t.session.failSave = codedError('checkpoint-conflict', 'fork');
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', 'x'),
      409,
      'checkpoint-conflict',
      /fork/,
    );
    t.session.failSave = codedError('no-space', 'the private directory is full');
    expectProblem(await t.call('/train/v1/checkpoint?step=1', 'POST', 'x'), 500, 'no-space', /full/);
    t.session.failSave = new Error('broker unreachable');
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', 'x'),
      500,
      'session-failed',
      /unreachable/,
    );
    t.session.failSave = codedError('Not A Slug!', 'odd code');
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', 'x'),
      500,
      'session-failed',
      /odd code/,
    );
    t.session.failLatest = codedError('checkpoint-decrypt', 'tag mismatch');
    expectProblem(await t.call('/train/v1/checkpoint'), 500, 'checkpoint-decrypt', /tag mismatch/);
    t.session.failLatest = undefined;
    expect(t.lines.some((l) => l.includes('409 checkpoint-rollback'))).toBe(true);
  });

  it('POST /train/v1/metrics: finite scalars with an integer step; each bad field named', async () => {
    const ok = await t.call('/train/v1/metrics', 'POST', json({ step: 3, loss: 0.5, 'train/acc': 1 }), {
      'content-type': 'application/json',
    });
    expect([ok.status, ok.body.length]).toEqual([204, 0]);
    expect(t.session.metricsSeen.at(-1)).toEqual({ step: 3, loss: 0.5, 'train/acc': 1 });
    expect((await t.call('/train/v1/metrics', 'POST', json({ step: 0 }))).status).toBe(204);

    const seen = t.session.metricsSeen.length;
    const bad: [string, string, RegExp][] = [
      [json({ loss: 1 }), 'bad-metrics', /^step: required/],
      [json({ step: -1 }), 'bad-metrics', /^step: /],
      [json({ step: 1.5 }), 'bad-metrics', /^step: /],
      [json({ step: '3' }), 'bad-metrics', /^step: /],
      [json({ step: null }), 'bad-metrics', /^step: /],
      [json({ step: 1, loss: 'low' }), 'bad-metrics', /^loss: must be a finite number/],
      [json({ step: 1, loss: null }), 'bad-metrics', /^loss: /],
      [json({ step: 1, nested: { a: 1 } }), 'bad-metrics', /^nested: /],
      [json({ step: 1, 'bad name': 1 }), 'bad-metrics', /^"bad name": /],
      [json({ step: 1, '1st': 1 }), 'bad-metrics', /^"1st": /],
      ['{"step": 1, "loss": 1e999}', 'bad-metrics', /^loss: /],
      ['[1, 2]', 'bad-request', /object/],
      ['"text"', 'bad-request', /object/],
      ['{"step": ', 'bad-request', /not JSON/],
      ['', 'bad-request', /not JSON/],
      [`{"step": 1, "pad": "${'x'.repeat(1024 * 1024)}"}`, 'too-large', /at most/],
    ];
    for (const [body, type, detail] of bad) {
      const r = await t.call('/train/v1/metrics', 'POST', body);
      expect(TRAIN_API_STATUS[type as keyof typeof TRAIN_API_STATUS]).toBe(r.status);
      expectProblem(r, r.status, type, detail);
    }
    expect(t.session.metricsSeen.length).toBe(seen);
  });

  it('unknown routes are 404, other methods on a route 405, a bad URL 400', async () => {
    expectProblem(await t.call('/train/v1/nothing'), 404, 'not-found', /no route GET \/train\/v1\/nothing/);
    expectProblem(await t.call('/train/v2/job'), 404, 'not-found');
    expectProblem(await t.call('/'), 404, 'not-found');
    expectProblem(
      await t.call('/train/v1/job', 'POST', '{}'),
      405,
      'method-not-allowed',
      /takes GET, not POST/,
    );
    // A HEAD answer has no body: the status says it.
    expect((await t.call('/train/v1/job', 'HEAD')).status).toBe(405);
    expectProblem(await t.call('/train/v1/checkpoint', 'PUT', 'x'), 405, 'method-not-allowed');
    expectProblem(await t.call('/train/v1/checkpoint', 'DELETE'), 405, 'method-not-allowed');
    expectProblem(await t.call('/train/v1/metrics'), 405, 'method-not-allowed', /takes POST, not GET/);
    expectProblem(await t.call('/train/v1/finish'), 405, 'method-not-allowed');
    const bad = await t.call('/train/v1/%zz');
    expect(bad.status).toBe(400);
    expect(typeOf(bad)).toBe('bad-request');
  });
});

describe('training API: limits, order and finish', () => {
  it('refuses a state over the limit, declared or counted', async () => {
    const t = await start({ maxCheckpointBytes: 16 });
    expect((await t.call('/train/v1/checkpoint?step=1', 'POST', new Uint8Array(16))).status).toBe(201);
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', new Uint8Array(17)),
      413,
      'too-large',
      /16 bytes/,
    );
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', ['0123456789', '0123456789']),
      413,
      'too-large',
    );
    // The connection survives the refusal of a large upload: the body was read and dropped.
    expectProblem(
      await t.call('/train/v1/checkpoint?step=1', 'POST', new Uint8Array(5 << 20)),
      413,
      'too-large',
    );
    expect(t.session.checkpoints.length).toBe(1);
    await t.server.close();
  });

  it('runs saves one at a time, and finish after the saves before it', async () => {
    const t = await start();
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    t.session.onSave = (c) => (c.number === 1 ? gate : undefined);
    const first = t.call('/train/v1/checkpoint?step=1', 'POST', 'one');
    await new Promise((r) => setTimeout(r, 100));
    const second = t.call('/train/v1/checkpoint?step=2', 'POST', 'two');
    await new Promise((r) => setTimeout(r, 100));
    const fin = t.call('/train/v1/finish', 'POST', '');
    await new Promise((r) => setTimeout(r, 100));
    expect(t.session.calls).toEqual(['save 1']);
    release();
    expect((await first).status).toBe(201);
    expect((await second).status).toBe(201);
    expect((await fin).status).toBe(204);
    expect(t.session.calls).toEqual(['save 1', 'save 2', 'finish']);
    expect(t.session.maxActive).toBe(1);
    await t.server.close();
  });

  it('finish: checks its body, calls the session once, then refuses checkpoints, metrics and finish', async () => {
    const t = await start();
    expectProblem(
      await t.call('/train/v1/finish', 'POST', json({ metric: {} })),
      400,
      'bad-request',
      /^"metric": unknown field/,
    );
    expectProblem(
      await t.call('/train/v1/finish', 'POST', json({ metrics: [1] })),
      400,
      'bad-metrics',
      /^metrics: /,
    );
    expectProblem(
      await t.call('/train/v1/finish', 'POST', json({ metrics: { accuracy: 'high' } })),
      400,
      'bad-metrics',
      /^metrics\.accuracy: must be a finite number/,
    );
    expectProblem(await t.call('/train/v1/finish', 'POST', '{'), 400, 'bad-request');
    expect(t.session.finishCalls).toEqual([]);
    expect((await t.call('/train/v1/checkpoint?step=7', 'POST', 'state')).status).toBe(201);

    const done = await t.call(
      '/train/v1/finish',
      'POST',
      json({ metrics: { accuracy: 0.9, heldout_loss: 0.2 } }),
    );
    expect([done.status, done.body.length]).toEqual([204, 0]);
    expect(t.session.finishCalls).toEqual([{ accuracy: 0.9, heldout_loss: 0.2 }]);

    expectProblem(
      await t.call('/train/v1/checkpoint?step=8', 'POST', 'late'),
      409,
      'finished',
      /no more checkpoints/,
    );
    expectProblem(await t.call('/train/v1/metrics', 'POST', json({ step: 8 })), 409, 'finished');
    expectProblem(await t.call('/train/v1/finish', 'POST', ''), 409, 'finished');
    expect(t.session.finishCalls.length).toBe(1);
    expect(t.session.checkpoints.length).toBe(1);
    // Reading stays allowed.
    expect((await t.call('/train/v1/job')).status).toBe(200);
    const latest = await t.call('/train/v1/checkpoint');
    expect([latest.status, latest.body.toString()]).toEqual([200, 'state']);
    await t.server.close();
  });

  it('finish with no body calls the session without metrics', async () => {
    const t = await start();
    expect((await t.call('/train/v1/finish', 'POST')).status).toBe(204);
    expect(t.session.finishCalls).toEqual([undefined]);
    await t.server.close();
  });
});
